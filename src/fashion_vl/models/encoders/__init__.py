"""Adapters around third-party backbones (timm CNNs, Hugging Face BERT) with one method vocabulary."""
