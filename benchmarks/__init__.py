"""Benchmarks: the gateway against Mosquitto and the Channels tutorial, under open-loop load."""
