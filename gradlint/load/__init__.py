"""Loading: finding the user's files, importing them in a sandbox, discovering the models to
check and building them. Imports torch only inside functions, in the worker that runs them."""
