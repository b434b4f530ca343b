"""emkit.training"""
