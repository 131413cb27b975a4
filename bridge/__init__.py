"""ari-bridge: Vonage NCCO and Exotel Connect call flows on your own Asterisk, over ARI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ari-bridge")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
