"""A small DS-1000 written in both official formats (the real one is not available offline).

Three problems (NumPy, Pandas, and a NumPy one with a string test that forbids loops), modelled on
the public files: xlang-ai's ds1000.jsonl.gz (prompt, reference_code, code_context with
generate_test_case / exec_test / test_execution / test_string, metadata) and HKUNLP's
ds1000_data/<Lib>/Completion/q<N>/ (prompt.txt, reference_code.txt, code_context.txt with
[insert], test_code.py, .cfg, input/inputN.pkl, ans/ansN.pkl). With the ds1000 extra: one problem
each for SciPy, scikit-learn and PyTorch (references only), and a Matplotlib one in both formats,
whose tests follow DS-1000's: compare the saved image with the reference's, else inspect the axes
(xlang: exec_test; HKUNLP: the part of program.py after its savefig, and ans/oracle_plot.png).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import textwrap
import zipfile

import numpy as np
import pandas as pd

PROBLEMS = [
    {
        "library": "Numpy", "id": 0, "q": 0, "test_type": 1,
        "prompt": "Problem:\nHow do I get the diagonal of a square array `a`?\nA:\n<code>\nimport numpy as np\n"
                  "a = np.arange(16).reshape(4, 4)\n</code>\nresult = ... # put solution in this variable\n"
                  "BEGIN SOLUTION\n<code>\n",
        "reference": "result = np.diag(a)",
        "setup": "import numpy as np\na = test_input",
        "inputs": [np.arange(16).reshape(4, 4), np.arange(9).reshape(3, 3) * 2],
        "answer": lambda a: np.diag(a),
        "compare": "np.testing.assert_array_equal(result, ans)\n    return 1",
        "string_test": None,
    },
    {
        "library": "Pandas", "id": 1, "q": 0, "test_type": 1,
        "prompt": "Problem:\nKeep only the rows of `df` whose column 'x' is positive.\nA:\n<code>\n"
                  "import pandas as pd\ndf = pd.DataFrame({'x': [1, -2, 3]})\n</code>\nresult = ... # put solution "
                  "in this variable\nBEGIN SOLUTION\n<code>\n",
        "reference": "result = df[df['x'] > 0]",
        "setup": "import pandas as pd\ndf = test_input",
        "inputs": [pd.DataFrame({"x": [1, -2, 3]}), pd.DataFrame({"x": [-1, 0, 5, 7]})],
        "answer": lambda df: df[df["x"] > 0],
        "compare": "pd.testing.assert_frame_equal(result, ans, check_dtype=False)\n    return 1",
        "string_test": None,
    },
    {
        "library": "Numpy", "id": 2, "q": 1, "test_type": 3,
        "prompt": "Problem:\nSum each row of `a` without a Python loop.\nA:\n<code>\nimport numpy as np\n"
                  "a = np.ones((2, 3))\n</code>\nresult = ... # put solution in this variable\nBEGIN SOLUTION\n<code>\n",
        "reference": "result = a.sum(axis=1)",
        "setup": "import numpy as np\na = test_input",
        "inputs": [np.ones((2, 3)), np.arange(12.0).reshape(3, 4)],
        "answer": lambda a: a.sum(axis=1),
        "compare": "np.testing.assert_allclose(result, ans)\n    return 1",
        "string_test": "for",  # the solution must not contain a `for` token
    },
]

# One problem per further library the scorer supports (their results cross as sparse matrices,
# arrays, tensors). xlang only (the HKUNLP path decodes the same way); references only. Matplotlib:
# both formats, with right and wrong answers (its test inspects the figures of the process that drew).
try:
    import scipy.sparse as _sparse
    import sklearn  # noqa: F401
    import torch as _torch
    import matplotlib  # noqa: F401
except ImportError:  # pragma: no cover - the ds1000 extra is not installed
    _sparse = _torch = None
if _sparse is not None:
    PROBLEMS += [
        {
            "library": "Scipy", "id": 3, "q": 0, "test_type": 1, "reference_only": True, "formats": ("xlang",),
            "prompt": "Problem:\nMake `a` a CSR sparse matrix.\nA:\n<code>\nimport numpy as np\nfrom scipy import sparse\n"
                      "a = np.eye(3)\n</code>\nresult = ... # put solution in this variable\nBEGIN SOLUTION\n<code>\n",
            "reference": "result = sparse.csr_matrix(a)",
            "setup": "import numpy as np\nfrom scipy import sparse\na = test_input",
            "inputs": [np.eye(3), np.arange(6.0).reshape(2, 3)],
            "answer": lambda a: _sparse.csr_matrix(a),
            "compare": "assert type(result) == type(ans) and (result != ans).nnz == 0\n    return 1",
            "string_test": None,
        },
        {
            "library": "Sklearn", "id": 4, "q": 0, "test_type": 1, "reference_only": True, "formats": ("xlang",),
            "prompt": "Problem:\nStandardize the columns of `a`.\nA:\n<code>\nimport numpy as np\n"
                      "from sklearn.preprocessing import StandardScaler\na = np.ones((3, 2))\n</code>\nresult = ... "
                      "# put solution in this variable\nBEGIN SOLUTION\n<code>\n",
            "reference": "result = StandardScaler().fit_transform(a)",
            "setup": "import numpy as np\nfrom sklearn.preprocessing import StandardScaler\na = test_input",
            "inputs": [np.arange(6.0).reshape(3, 2), np.array([[1.0, 5.0], [3.0, 2.0], [0.0, 1.0]])],
            "answer": lambda a: (a - a.mean(axis=0)) / a.std(axis=0),
            "compare": "np.testing.assert_allclose(result, ans)\n    return 1",
            "string_test": None,
        },
        {
            "library": "Pytorch", "id": 5, "q": 0, "test_type": 1, "reference_only": True, "formats": ("xlang",),
            "prompt": "Problem:\nDouble the tensor `a`.\nA:\n<code>\nimport torch\na = torch.ones(2)\n</code>\n"
                      "result = ... # put solution in this variable\nBEGIN SOLUTION\n<code>\n",
            "reference": "result = a * 2",
            "setup": "import torch\na = test_input",
            "inputs": [_torch.arange(4.0), _torch.ones(2, 3)],
            "answer": lambda a: a * 2,
            "compare": "assert __import__('torch').equal(result, ans)\n    return 1",
            "string_test": None,
        },
        {
            "library": "Matplotlib", "id": 6, "q": 0, "test_type": 1,
            "prompt": "import numpy as np\nimport matplotlib.pyplot as plt\n\nx = np.arange(10)\ny = 2 * x\n\n"
                      "# Plot y over x and title the plot \"Y\"\n# SOLUTION START\n",
            "reference": "plt.plot(x, y)\nplt.title(\"Y\")",
            "inputs": [None],
            "answer": lambda _: None,
            "compare": "assert result is True\n    return 1",
            "string_test": None,
        },
    ]

# Broken solutions per problem: a wrong answer, an exception, and (problem 2) a loop the string test rejects.
BROKEN = {
    0: ["result = np.diag(a) + 1", "result = undefined_name"],
    1: ["result = df[df['x'] >= 0]", "raise ValueError('no')"],
    2: ["result = np.array([sum(row) for row in a])", "result = a.sum(axis=0)"],
    6: ["plt.plot(y, x)\nplt.title(\"Y\")"],  # x over y: another image, other data
}
# Right answers besides the reference, each passing one half of the Matplotlib test only: the same
# image with an extra empty line (the inspection counts two lines), and a red line (another image).
PASSING = {
    6: ["plt.plot(x, y)\nplt.title(\"Y\")\nplt.plot([], [])", "plt.plot(x, y, color=\"red\")\nplt.title(\"Y\")"],
}

# DS-1000's Matplotlib tests (xlang-ai's exec_test and HKUNLP's program.py after its savefig): the
# image, else the axes.
_MPL_INSPECT = """\
ax = plt.gca()
assert len(ax.get_lines()) == 1
line = ax.get_lines()[0]
assert isinstance(line, matplotlib.lines.Line2D)
assert np.allclose(line.get_xdata(), np.arange(10)) and np.allclose(line.get_ydata(), 2 * np.arange(10))
assert ax.get_title() == "Y"
"""
_MPL_XLANG = '''\
import numpy as np
import matplotlib
import matplotlib.pyplot as plt
from PIL import Image


def skip_plt_cmds(l):
    return all(p not in l for p in ["plt.show()", "plt.clf()", "plt.close()", "savefig"])


def generate_test_case(test_case_id):
    x = np.arange(10)
    y = 2 * x
    plt.plot(x, y)
    plt.title("Y")
    plt.savefig("ans.png", bbox_inches="tight")
    plt.close()
    return None, None


def exec_test(result, ans):
    code_img = np.array(Image.open("output.png"))
    oracle_img = np.array(Image.open("ans.png"))
    sample_image_stat = code_img.shape == oracle_img.shape and np.allclose(code_img, oracle_img)
    if not sample_image_stat:
{inspect}
    return 1


exec_context = r"""
import numpy as np
import matplotlib.pyplot as plt
x = np.arange(10)
y = 2 * x
[insert]
plt.savefig('output.png', bbox_inches ='tight')
result = None
"""


def test_execution(solution: str):
    solution = "\\n".join(filter(skip_plt_cmds, solution.split("\\n")))
    code = exec_context.replace("[insert]", solution)
    for i in range(1):
        test_input, expected_result = generate_test_case(i + 1)
        test_env = {{"test_input": test_input}}
        exec(code, test_env)
        assert exec_test(test_env["result"], expected_result)
'''
_MPL_HKUNLP = """\
import pickle
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--test_case", type=int, default=1)
args = parser.parse_args()

import numpy as np
import matplotlib.pyplot as plt

x = np.arange(10)
y = 2 * x

# Plot y over x and title the plot "Y"
# SOLUTION START
[insert]
# SOLUTION END
plt.savefig('result/plot.png', bbox_inches ='tight')

#Image Testing
from PIL import Image
import numpy as np
code_img = np.array(Image.open('result/plot.png'))
oracle_img = np.array(Image.open('ans/oracle_plot.png'))
sample_image_stat = (
    code_img.shape == oracle_img.shape
    and np.allclose(code_img, oracle_img)
)
if sample_image_stat:
    with open('result/result_1.pkl', 'wb') as file:
        # if image test passed, we save True to the result file
        pickle.dump(True, file)

# Testing
import matplotlib
{inspect}with open('result/result_1.pkl', 'wb') as file:
    # or if execution-based test passed, we save True to the result file
    pickle.dump(True, file)
"""


def _oracle_plot() -> bytes:
    """HKUNLP's ans/oracle_plot.png: the reference's plot (drawn without pyplot's global state)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(np.arange(10), 2 * np.arange(10))
    ax.set_title("Y")
    out = io.BytesIO()
    fig.savefig(out, format="png", bbox_inches="tight")
    return out.getvalue()


def _xlang_code_context(p: dict) -> str:
    if p["library"] == "Matplotlib":
        return _MPL_XLANG.format(inspect=textwrap.indent(_MPL_INSPECT, " " * 8))
    cases = len(p["inputs"])
    string_test = ""
    if p["string_test"]:
        string_test = textwrap.dedent(f'''
            def test_string(solution: str):
                tokens = []
                for token in tokenize.tokenize(io.BytesIO(solution.encode("utf-8")).readline):
                    tokens.append(token.string)
                assert "{p["string_test"]}" not in tokens
            ''')
    inputs_src = "\n".join(
        f"        {'if' if i == 0 else 'elif'} test_case_id == {i + 1}:\n            data = PICKLED[{i}]"
        for i in range(cases)
    )
    return textwrap.dedent('''\
        import pickle, copy, io, tokenize
        import numpy as np
        import pandas as pd
        PICKLED = pickle.loads({pickled!r})
        ANSWERS = pickle.loads({answers!r})

        def generate_test_case(test_case_id):
            def define_test_input(test_case_id):
        {inputs_src}
                return data
            test_input = define_test_input(test_case_id)
            expected_result = ANSWERS[test_case_id - 1]
            return test_input, expected_result

        def exec_test(result, ans):
            {compare}

        exec_context = r"""
        {setup}
        [insert]
        """

        def test_execution(solution: str):
            code = exec_context.replace("[insert]", solution)
            for i in range({cases}):
                test_input, expected_result = generate_test_case(i + 1)
                test_env = {{"test_input": test_input}}
                exec(code, test_env)
                assert exec_test(test_env["result"], expected_result)
        ''').format(
        pickled=pickle.dumps(p["inputs"]), answers=pickle.dumps([p["answer"](x) for x in p["inputs"]]),
        inputs_src=inputs_src, compare=p["compare"], setup=p["setup"], cases=cases,
    ) + string_test


def write_xlang(path: str) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for p in PROBLEMS:
            record = {
                "prompt": p["prompt"], "reference_code": p["reference"], "code_context": _xlang_code_context(p),
                "metadata": {"problem_id": p["id"], "library_problem_id": p["q"], "library": p["library"],
                             "test_case_cnt": len(p["inputs"]), "perturbation_type": "Origin",
                             "perturbation_origin_id": p["q"]},
            }
            f.write(json.dumps(record) + "\n")
    return path


def _hkunlp_files(p: dict) -> dict[str, bytes]:
    context = _MPL_HKUNLP.format(inspect=_MPL_INSPECT) if p["library"] == "Matplotlib" else textwrap.dedent('''\
        import pickle
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--test_case", type=int, default=1)
        args = parser.parse_args()
        import numpy as np
        import pandas as pd
        test_input = pickle.load(open(f"input/input{args.test_case}.pkl", "rb"))
        ''') + p["setup"] + "\n[insert]\n" + textwrap.dedent('''\
        with open('result/result_{}.pkl'.format(args.test_case), 'wb') as file:
            pickle.dump(result, file)
        ''')
    string_test = ""
    if p["string_test"]:
        string_test = textwrap.dedent(f'''
            def stringTest(code):
                import io, tokenize
                tokens = [t.string for t in tokenize.tokenize(io.BytesIO(code.encode("utf-8")).readline)]
                return "{p["string_test"]}" not in tokens
            ''')
    test_code = textwrap.dedent(f'''\
        import numpy as np
        import pandas as pd

        def test(result, ans=None):
            try:
                {p["compare"].replace(chr(10) + "    return 1", "")}
                return 1
            except Exception:
                return 0
        ''') + string_test
    files = {
        "prompt.txt": p["prompt"].encode(), "reference_code.txt": p["reference"].encode(),
        "code_context.txt": context.encode(), "test_code.py": test_code.encode(),
        ".cfg": (f"[library]\nlib = {p['library']}\n\n[test]\ntest_type = {p['test_type']}\n"
                 f"test_case_cnt = {len(p['inputs'])}\n\n[perturbation]\nperturbation_type = Origin\n"
                 f"perturbation_origin_id = {p['q']}\n").encode(),
    }
    for i, x in enumerate(p["inputs"], 1):
        files[f"input/input{i}.pkl"] = pickle.dumps(x)
        files[f"ans/ans{i}.pkl"] = pickle.dumps(p["answer"](x))
    if p["library"] == "Matplotlib":
        files["ans/oracle_plot.png"] = _oracle_plot()
    return files


def write_hkunlp_zip(path: str) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for p in PROBLEMS:
            if "hkunlp" not in p.get("formats", ("hkunlp",)):
                continue
            for name, data in _hkunlp_files(p).items():
                z.writestr(f"ds1000_data/{p['library']}/Completion/q{p['q']}/{name}", data)
    return path


def hkunlp_task_id(p: dict) -> str:
    return f"{p['library']}/Completion/q{p['q']}"


if __name__ == "__main__":  # write both into a directory, for trying `raywiz eval score` by hand
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(out, exist_ok=True)
    print(write_xlang(os.path.join(out, "ds1000.jsonl.gz")), write_hkunlp_zip(os.path.join(out, "ds1000_data.zip")))
