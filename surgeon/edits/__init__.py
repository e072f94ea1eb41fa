"""Graph edits (recipes' building blocks); each returns a new Model and never mutates its input."""
