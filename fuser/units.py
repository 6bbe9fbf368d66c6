"""Number and size formatting shared by every layer."""
