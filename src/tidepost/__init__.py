"""tidepost: a mail transfer agent for intermittent, metered and dial-on-demand links."""

__version__ = "0.1.0"
