"""emkit.judging"""
