"""scorebeater: live probabilities that NBA players beat last season's free throws made."""

__version__ = "0.1.0"
