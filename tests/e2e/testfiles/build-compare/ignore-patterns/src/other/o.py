src/other/o.py
