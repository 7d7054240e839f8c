"""webpubsub: a self-hosted, wire-compatible Azure Web PubSub service."""

__version__ = "0.1.0"
