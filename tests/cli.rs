// placeholder: the CLI tests land here
