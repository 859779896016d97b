from ._digits import Dataset as Dataset
from ._digits import load_digits as load_digits
