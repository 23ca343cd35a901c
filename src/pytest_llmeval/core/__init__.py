"""The vocabulary every layer shares: errors, the check types, the AST guard. Imports nothing above it."""
