"""What GPU time costs: prices per GPU-hour (prices.py) and the counters integrated each tick (meter.py)."""
