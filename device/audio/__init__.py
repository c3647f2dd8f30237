"""Audio in and out: ALSA capture and playback, resampling, sound cues."""
