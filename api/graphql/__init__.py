"""The Strawberry schema of section 5 of the design."""
