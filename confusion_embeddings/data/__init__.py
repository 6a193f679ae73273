"""Pictures in, prepared arrays out: sources (folders, archives, CIFAR pickles), the
selection of pictures, and the prepared-array layout the train and predict stages load."""
