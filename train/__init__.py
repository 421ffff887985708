"""callwatch training: labelled recordings -> Keras CNN -> a run folder with a report."""
