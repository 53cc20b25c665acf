"""Repositories: the queries the services need, one module per aggregate. Functions take a Session."""
