"""emkit.stages"""
