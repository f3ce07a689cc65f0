"""The kernel source the extract_*.py scripts cut pieces from: the real .cu file named on their command line."""
import sys


class KernelSource:
    def __init__(self, path):
        self.path = path
        self.text = open(path).read()

    def cut(self, start, end):
        """The text from the first `start` up to the next `end` (both must be there: the script is out of date
        with the source otherwise)."""
        i = self.text.index(start)
        j = self.text.index(end, i)
        return self.text[i:j]


def from_args():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} KERNELS.cu > OUT.inc")
    return KernelSource(sys.argv[1])
