"""Several workers: the supervisor, its control channel, and the workers' counts added up."""
