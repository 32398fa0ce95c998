"""kopf handlers: thin glue that reads the cluster, calls the pure core and applies the result."""
