"""The baseline the gateway is compared to: the Channels tutorial's chat and a minimal bridge."""
