"""Model state: the scheduler (its only owner), admission, eviction, the catalog."""
