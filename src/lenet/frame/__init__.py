"""The ground floor: what every command and every piece of work may use. Config keys and their rules, the data sets'
records, the facts of a Hydra job (the metric a sweep optimizes, the command that reruns it), the checks of a composed
config, the errors a user can fix, console noise filtered, files written whole, files from others read as data and
their text quoted. It imports nothing else of lenet's, and neither torch nor Lightning."""
