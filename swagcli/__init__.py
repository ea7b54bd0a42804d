"""swag: weakly-supervised pretraining on hashtags, from raw dumps to transfer."""

__version__ = "0.1.0"
