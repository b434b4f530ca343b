"""emkit.testing"""
