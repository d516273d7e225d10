"""Week 12: interview preparation backed by runnable evidence."""
