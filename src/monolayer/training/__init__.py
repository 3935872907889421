"""Training: data from truth records, a resumable epoch loop, and one trainer per model."""
