"""Home-server side: the token service and the local realtime simulator."""
