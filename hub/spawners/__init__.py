"""One module per backend, so a local install never imports docker or kubernetes."""
