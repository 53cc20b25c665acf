"""Background workers started in the app's lifespan: the scheduling loop and the reconciler."""
