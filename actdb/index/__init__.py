"""The query index: counting, reduction, build and resume, n-gram and positional maths, projection and massive tables."""
