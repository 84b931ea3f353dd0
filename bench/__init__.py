"""Speed benchmark of the gateway against a bare Flask ceiling and the naive inline design."""
