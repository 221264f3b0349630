"""What every feature shares: database, errors, logging, ids, time."""
