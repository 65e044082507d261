"""The application layer: the workspace (data, trained recommender, news vectors) and the runs
behind the commands. Library layers below never import from here."""
