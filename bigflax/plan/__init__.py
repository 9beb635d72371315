"""`bigflax plan`: the planner (planner.py), what it reads off a compiled step's HLO
(hlo.py) and its report as a table or JSON (report.py). The chip table lives in
`train/chips.py`: the trainer's MFU needs it too, and the trainer may not import upwards."""
