"""Tools that work on torch modules directly (torch.fx / torch.export), not on the IR."""
