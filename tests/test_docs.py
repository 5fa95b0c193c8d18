"""The documentation cannot rot: its commands run real scripts with real flags, its links land.

Every shell command in a fenced block (```bash / sh / shell / console) of ``README.md``,
``docs/**/*.md``, ``configs/**/README.md``, ``data/README.md`` and
``benchmarks/results/README.md`` that runs a script of this repository (``tools/``, ``demo/``,
``benchmarks/``; as ``python X.py``, ``bash X.sh``, ``torchrun ... X.py``, with environment
assignments, line continuations and comments) must name a script that exists, and every
``--flag`` it shows must be an option of that script:

- ``.py``: the options of the script's own argparse parser. Running ``python X.py --help``
  costs 10-18 s per script on the project's 2-core machine (torch, mmcv and mmdet imports),
  so one subprocess runs every script as ``__main__`` with ``--help`` while the heavy
  packages (:data:`HEAVY`) are replaced by permissive stand-ins and any other module that
  fails to import under them becomes one too; ``argparse`` is patched to hand back the
  parser the script builds instead of parsing. The parser is therefore the script's real
  one (its ``add_argument`` calls, helpers such as ``parse_launch_args`` included). A script
  whose parser cannot be captured that way falls back to a real ``python X.py --help``.
- ``.sh``: the options its ``case`` statement matches; flags it forwards with ``"$@"`` /
  ``"${@:N}"`` to a Python script of the repository (``dist_train.sh`` -> ``train.py``)
  are checked against that script; forwarded to anything else (pytest), they are not checked.

Every relative link ``[text](path)`` / ``[text](path#anchor)`` outside code must resolve to a
file or folder, and an anchor into a Markdown file must be one of its headings (GitHub's
slug rules). ``python tests/test_docs.py --capture-parsers ...`` is the parser-capturing
subprocess.
"""
import argparse
import glob
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOC_PATTERNS = ('README.md', 'docs/**/*.md', 'configs/**/README.md', 'data/README.md',
                'benchmarks/results/README.md')
SHELL_LANGS = {'bash', 'sh', 'shell', 'console', 'zsh'}
# words that may precede the script in a command (launchers and shell keywords)
LAUNCHERS = {'python', 'python3', 'bash', 'sh', 'torchrun', 'exec', 'time', 'nohup', 'env',
             'do', 'then', 'else', '!', '{', '('}
SCRIPT_RE = re.compile(r'^(?:\./)?((?:tools|demo|benchmarks)/[\w./{},-]*\.(?:py|sh))$')
FLAG_RE = re.compile(r'^--[A-Za-z0-9][\w-]*$')
ENV_ASSIGNMENT = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=')
ALTERNATIVE = '\x00'  # a protected '|' inside a command
# packages replaced by stand-ins while a script builds its parser (slow to import, or GPU)
HEAVY = frozenset({
    'torch', 'torchvision', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain', 'mmcls', 'faiss',
    'open_clip', 'timm', 'onnx', 'onnxruntime', 'onnxsim', 'cv2', 'scipy', 'skimage',
    'sklearn', 'matplotlib', 'PIL', 'pycocotools', 'panopticapi', 'hotcoco',
    'imagecorruptions', 'tensorboard', 'einops', 'pandas'})


# ---------------------------------------------------------------------------- Markdown

@dataclass
class Command:
    """One simple shell command of a doc that runs a repository script."""
    doc: str
    line: int
    script: str  # relative to the repository root
    args: List[str]

    def where(self) -> str:
        return f'{self.doc}:{self.line}'


def doc_files(root: str = ROOT) -> List[str]:
    """The Markdown files this test keeps honest (absolute paths, sorted)."""
    found = set()
    for pattern in DOC_PATTERNS:
        found.update(p for p in glob.glob(osp.join(root, pattern), recursive=True)
                     if osp.isfile(p))
    return sorted(found)


def split_fences(text: str) -> Tuple[List[Tuple[int, str]], List[Tuple[str, int, List[str]]]]:
    """Lines outside fenced code blocks as (line number, text), and the blocks as (language,
    line number of the first content line, lines)."""
    prose, blocks = [], []
    lines = text.split('\n')
    i = 0
    while i < len(lines):
        opener = re.match(r'^( {0,3})(`{3,}|~{3,})\s*([^`\s]*)', lines[i])
        if not opener:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        indent, fence, lang = len(opener.group(1)), opener.group(2), opener.group(3).lower()
        closer = re.compile(r'^ {0,3}' + re.escape(fence[0]) + '{' + str(len(fence)) + r',}\s*$')
        body, start = [], i + 2
        i += 1
        while i < len(lines) and not closer.match(lines[i]):
            line = lines[i]
            body.append(line[min(indent, len(line) - len(line.lstrip(' '))):])
            i += 1
        blocks.append((lang, start, body))
        i += 1
    return prose, blocks


def strip_comment(line: str) -> str:
    """A shell line without its comment: ``#`` outside quotes at the start of a word."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in '\'"':
            quote = char
        elif char == '#' and (i == 0 or line[i - 1] in ' \t;&|('):
            return line[:i]
    return line


def logical_lines(block: Sequence[str], first_line: int) -> Iterator[Tuple[int, str]]:
    """Comment-free lines of a shell block with ``\\`` continuations joined."""
    current, start = '', None
    for offset, raw in enumerate(block):
        line = strip_comment(raw).rstrip()
        if start is None:
            start = first_line + offset
        if line.endswith('\\'):
            current += line[:-1] + ' '
            continue
        current += line
        if current.strip():
            yield start, current
        current, start = '', None
    if current.strip():
        yield start, current


def simple_commands(line: str) -> List[List[str]]:
    """The simple commands of a shell line as word lists: ``$(...)`` substitutions are
    commands of their own; ``;``, ``&&``, ``||``, ``|`` and ``&`` separate commands."""
    commands = []
    while True:  # innermost substitutions first
        inner = re.search(r'\$\(([^()]*)\)', line)
        if not inner:
            break
        commands.extend(simple_commands(inner.group(1)))
        line = line[:inner.start()] + 'SUBSTITUTION' + line[inner.end():]
    # ``a|b`` and ``[--x N | --y FILE]`` are the docs' alternatives, not pipes
    line = re.sub(r'(?<=[^\s|])\|(?=[^\s|])', ALTERNATIVE, line)
    line = re.sub(r'(?<=\s)\|(?=\s+[-\[])', ALTERNATIVE, line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ''
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes: fall back to white space
        words = line.split()
    current = []
    for word in words:
        if word and set(word) <= set(';&|'):
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    return [c for c in commands if c]


def expand_braces(word: str) -> List[str]:
    """``a/{b,c}d`` -> ``[a/bd, a/cd]`` (bash brace expansion, any number of groups)."""
    group = re.search(r'\{([^{}]*,[^{}]*)\}', word)
    if not group:
        return [word]
    return [expanded for choice in group.group(1).split(',')
            for expanded in expand_braces(word[:group.start()] + choice + word[group.end():])]


def script_command(words: List[str]) -> Optional[Tuple[List[str], List[str]]]:
    """(scripts, arguments) when the command runs a repository script, else None."""
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return None
    if words[0] not in LAUNCHERS and not SCRIPT_RE.match(words[0]):
        return None
    for index, word in enumerate(words):
        match = SCRIPT_RE.match(word)
        if match:
            return expand_braces(match.group(1)), words[index + 1:]
    return None


def doc_commands(path: str, root: str = ROOT) -> List[Command]:
    """Every command of the doc's shell blocks that runs a repository script."""
    with open(path, encoding='utf-8') as f:
        _, blocks = split_fences(f.read())
    doc = osp.relpath(path, root)
    found = []
    for lang, start, body in blocks:
        if lang not in SHELL_LANGS:
            continue
        for line_no, line in logical_lines(body, start):
            for words in simple_commands(line):
                parsed = script_command(words)
                if parsed:
                    scripts, args = parsed
                    found.extend(Command(doc, line_no, s, args) for s in scripts)
    return found


def shown_flags(args: Sequence[str]) -> List[str]:
    """The ``--flags`` of an argument list as the doc shows them: optional brackets, ``...``
    and ``=value`` removed; everything after ``--`` is positional."""
    flags = []
    for arg in args:
        if arg == '--':
            break
        for part in arg.replace(ALTERNATIVE, '|').split('|'):
            word = part.strip('[]').rstrip('.').split('=', 1)[0]
            if FLAG_RE.match(word):
                flags.append(word)
    return flags


def strip_inline_markup(text: str) -> str:
    """What GitHub renders of a heading: link and image texts, no HTML, no emphasis marks."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)
    text = re.sub(r'<[^>]+>', '', text)
    text = re.sub(r'(?<![\w`])_(\S(?:.*?\S)?)_(?![\w`])', r'\1', text)
    return text


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than ``-`` and ``_``
    removed, each space a hyphen."""
    text = strip_inline_markup(heading).strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def heading_anchors(path: str) -> Set[str]:
    """Every heading anchor of a Markdown file (duplicates numbered as GitHub does)."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    prose, _ = split_fences(text)
    anchors, seen = set(), {}
    for _, line in prose:
        match = re.match(r'^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$', line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f'{slug}-{count}')
    anchors.update(re.findall(r'<a\s+(?:name|id)="([^"]+)"', text))
    return anchors


LINK_RE = re.compile(r'(?<!!)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')


def check_links(paths: Sequence[str], root: str = ROOT) -> List[str]:
    """Problems of the relative links of the given Markdown files."""
    problems = []
    anchors_of: Dict[str, Set[str]] = {}
    for path in paths:
        with open(path, encoding='utf-8') as f:
            prose, _ = split_fences(f.read())
        doc = osp.relpath(path, root)
        for line_no, line in prose:
            line = re.sub(r'`[^`]*\]\([^`]*`', '', line)  # code that merely looks like a link
            targets = [m.group(2) for m in LINK_RE.finditer(line)]
            definition = re.match(r'^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)', line)  # [ref]: path
            if definition:
                targets.append(definition.group(1))
            for target in targets:
                if re.match(r'^[A-Za-z][A-Za-z0-9+.-]*:', target) or target.startswith('//'):
                    continue  # http(s), mailto, ...
                file_part, _, anchor = target.partition('#')
                file_part = re.sub(r'%20', ' ', file_part)
                if file_part:
                    base = root if file_part.startswith('/') else osp.dirname(path)
                    resolved = osp.normpath(osp.join(base, file_part.lstrip('/')))
                else:
                    resolved = path
                if not osp.exists(resolved):
                    problems.append(f'{doc}:{line_no}: link {target}: {file_part} does not '
                                    'exist')
                    continue
                if anchor and resolved.endswith('.md') and osp.isfile(resolved):
                    if resolved not in anchors_of:
                        anchors_of[resolved] = heading_anchors(resolved)
                    if anchor not in anchors_of[resolved]:
                        problems.append(f'{doc}:{line_no}: link {target}: no heading with the '
                                        f'anchor #{anchor} in {osp.relpath(resolved, root)}')
    return problems


# ---------------------------------------------------------------------------- shell scripts

def sh_case_flags(text: str) -> Set[str]:
    """The options a shell script's ``case`` patterns match (``--torch|--python)``)."""
    flags = set()
    for pattern in re.findall(r'^\s*((?:-{1,2}[\w-]+\s*\|\s*)*-{1,2}[\w-]+)\s*\)', text, re.M):
        flags.update(p.strip() for p in pattern.split('|'))
    return flags


def sh_forwarding(path: str, root: str) -> Tuple[Optional[str], bool]:
    """Where a shell script forwards its own arguments: (repository .py script or None,
    whether it forwards to something that is not a repository script)."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    target, elsewhere = None, False
    for _, line in logical_lines(lines, 1):
        if not re.search(r'\$\{?@', line) or re.match(r'^\s*"?\$\{?@', line):
            continue  # no "$@", or the arguments run as a command themselves
        beside = re.search(r'\$\(dirname "\$(?:0|\{BASH_SOURCE\[0\]\})"\)/([\w./-]+\.py)', line)
        in_root = re.search(r'\$\{?ROOT\}?/([\w./-]+\.py)', line)
        plain = re.search(r'(?<![\w/.$-])((?:tools|demo|benchmarks)/[\w./-]+\.py)', line)
        if beside:
            target = osp.normpath(osp.join(osp.relpath(osp.dirname(path), root),
                                           beside.group(1)))
        elif in_root or plain:
            target = osp.normpath((in_root or plain).group(1))
        elif re.search(r'\bpytest\b', line):
            elsewhere = True
    return target, elsewhere


# ---------------------------------------------------------------------------- parsers

_OPTIONS_CACHE: Dict[Tuple[str, str], dict] = {}


def parser_options(scripts: Sequence[str], root: str = ROOT) -> Dict[str, dict]:
    """``{script: {'options': [...], 'how': 'stand-ins' | 'help', 'error': ...}}`` of the
    repository's Python scripts (paths relative to ``root``), cached per process."""
    todo = sorted({s for s in scripts if (root, s) not in _OPTIONS_CACHE})
    if todo:
        with tempfile.TemporaryDirectory() as tmp:
            out = osp.join(tmp, 'parsers.json')
            env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                       PYTHONDONTWRITEBYTECODE='1')
            proc = subprocess.run(
                [sys.executable, osp.abspath(__file__), '--capture-parsers', '--root', root,
                 '--out', out, *todo], cwd=root, env=env, capture_output=True, text=True,
                timeout=600)
            if not osp.isfile(out):
                raise RuntimeError('the parser-capturing subprocess wrote nothing:\n'
                                   + proc.stdout[-3000:] + proc.stderr[-3000:])
            with open(out) as f:
                captured = json.load(f)
        for script in todo:
            entry = captured.get(script) or {'error': 'not captured'}
            if entry.get('options') is None:
                entry = _help_options(script, root, entry.get('error'))
            _OPTIONS_CACHE[(root, script)] = entry
    return {s: _OPTIONS_CACHE[(root, s)] for s in scripts}


def _help_options(script: str, root: str, why: Optional[str]) -> dict:
    """The fallback: a real ``python SCRIPT --help`` and the options it lists."""
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, script, '--help'], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {'options': None, 'how': 'help', 'error': f'{why}; --help exited with '
                f'{proc.returncode}: {proc.stderr.strip()[-500:]}'}
    usage, _, rest = proc.stdout.partition('\n\n')
    listed = [usage] + [line for line in rest.split('\n') if re.match(r'^\s{2}-', line)]
    options = sorted(set(re.findall(r'(?<![\w-])(--?[A-Za-z0-9][\w-]*)', ' '.join(listed))))
    return {'options': options, 'how': 'help', 'error': why}


# ---------------------------------------------------------------------------- the check

def check_commands(commands: Sequence[Command], root: str = ROOT) -> List[str]:
    """Problems of the given commands: missing scripts, flags their parsers lack."""
    problems = []
    accepted: Dict[str, Optional[Set[str]]] = {}
    forwards: Dict[str, Optional[str]] = {}
    py_scripts = set()
    for command in commands:
        path = osp.join(root, command.script)
        if not osp.isfile(path):
            continue
        if command.script.endswith('.py'):
            py_scripts.add(command.script)
        elif command.script not in forwards:
            target, elsewhere = sh_forwarding(path, root)
            forwards[command.script] = target
            with open(path, encoding='utf-8') as f:
                case_flags = sh_case_flags(f.read())
            accepted[command.script] = None if elsewhere else case_flags
            if target:
                if not osp.isfile(osp.join(root, target)):
                    problems.append(f'{command.script} forwards its arguments to {target}, '
                                    'which does not exist')
                else:
                    py_scripts.add(target)
    options = parser_options(sorted(py_scripts), root) if py_scripts else {}
    for script, entry in options.items():
        if entry.get('options') is None:
            problems.append(f'{script}: its argument parser could not be read '
                            f'({entry.get("error")})')
            accepted[script] = None
        else:
            accepted[script] = set(entry['options'])
    for script, target in forwards.items():
        if target and accepted.get(script) is not None and accepted.get(target) is not None:
            accepted[script] = accepted[script] | accepted[target]
    for command in commands:
        if not osp.isfile(osp.join(root, command.script)):
            problems.append(f'{command.where()}: {command.script} does not exist')
            continue
        known = accepted.get(command.script)
        if known is None:
            continue
        for flag in shown_flags(command.args):
            if flag not in known and flag != '--help':
                via = (f' (nor of {forwards[command.script]}, which it forwards to)'
                       if forwards.get(command.script) else '')
                problems.append(f'{command.where()}: {flag} is not an option of '
                                f'{command.script}{via}')
    return problems


def check_docs(paths: Sequence[str], root: str = ROOT) -> Tuple[List[str], int]:
    """(problems, number of script commands checked) of the given Markdown files."""
    commands = [c for p in paths for c in doc_commands(p, root)]
    return check_commands(commands, root) + check_links(paths, root), len(commands)


# ---------------------------------------------------------------------------- tests

def test_docs_commands_and_links():
    """README, docs/ and the config READMEs: every script command and every link holds."""
    paths = doc_files()
    assert len(paths) >= 15, f'expected README.md and docs/en/**: found {paths}'
    problems, checked = check_docs(paths)
    assert checked >= 100, f'only {checked} script commands found: is the extraction broken?'
    assert not problems, 'stale docs:\n' + '\n'.join(problems)


def _write(path, text):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


FAKE_TOOL = '''\
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))
import argparse

import torch  # a stand-in while the parser is captured
from mmengine.config import DictAction
from torch import nn


class Net(nn.Module):  # module code on stand-ins must not stop the capture
    pass


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    parser.add_argument('--alpha', type=int)
    parser.add_argument('--dry-run', action='store_true')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return parser.parse_args(argv)


def main():
    args = parse_args()
    raise SystemExit(f'ran with {args}: the capture should have stopped before this')


if __name__ == '__main__':
    main()
'''

FAKE_DIST = '''\
#!/usr/bin/env bash
CONFIG=$1
NPROC=$2
python -m torch.distributed.run --nproc_per_node="$NPROC" \\
    "$(dirname "$0")/fake_tool.py" "$CONFIG" "${@:3}"
'''

FAKE_OWN_SH = '''\
#!/usr/bin/env bash
run() {
  "$@" >log 2>&1
}
while (($#)); do
  case $1 in
    --yes) YES=1; shift ;;
    --level|--depth) LEVEL=$2; shift 2 ;;
    -h|--help) exit 0 ;;
    *) echo "unknown $1"; exit 2 ;;
  esac
done
'''

FAKE_PAGE = '''\
# Fake page

## Real heading

```bash
python tools/fake_tool.py CFG --alpha 1 --beta 2
FOO=1 python tools/fake_tool.py CFG --alpha=3 [--dry-run] \\
    --cfg-options a=1 b=--not-a-flag  # --not-a-flag-either
bash tools/dist_fake.sh CFG 2 --alpha 3 --gamma
torchrun --nproc_per_node 8 tools/fake_tool.py CFG --dry-run
python tools/moved_tool.py CFG --alpha 1
source "$(bash tools/own.sh --yes --no)/bin/activate"
bash tools/own.sh --level 2 --depth 3 --help
cat tools/not_run_here.py --whatever
```

```python
run('tools/fake_tool.py --not-shell')
```

Links: [a](missing.md), [b](other.md#nope), [c](other.md#a-heading--with-punctuation),
[d](#real-heading), [e](#nope2), [f](https://example.com/x#y), [g](tools/),
`[h](not-a-link.md)`.
[ref]: gone.md
'''


def test_checker_reports_renamed_flags_moved_scripts_and_broken_links(tmp_path):
    """The checker itself, on a fabricated repository: each kind of rot is reported, by
    name, and nothing valid is."""
    root = str(tmp_path)
    _write(osp.join(root, 'tools', 'fake_tool.py'), FAKE_TOOL)
    _write(osp.join(root, 'tools', 'dist_fake.sh'), FAKE_DIST)
    _write(osp.join(root, 'tools', 'own.sh'), FAKE_OWN_SH)
    _write(osp.join(root, 'docs', 'page.md'), FAKE_PAGE)
    _write(osp.join(root, 'docs', 'other.md'), '# A heading — with punctuation!\n')
    _write(osp.join(root, 'docs', 'tools', 'keep'), '')
    problems, checked = check_docs([osp.join(root, 'docs', 'page.md')], root)
    assert checked == 7
    assert sorted(problems) == sorted([
        'docs/page.md:6: --beta is not an option of tools/fake_tool.py',
        'docs/page.md:9: --gamma is not an option of tools/dist_fake.sh (nor of '
        'tools/fake_tool.py, which it forwards to)',
        'docs/page.md:11: tools/moved_tool.py does not exist',
        'docs/page.md:12: --no is not an option of tools/own.sh',
        'docs/page.md:21: link missing.md: missing.md does not exist',
        'docs/page.md:21: link other.md#nope: no heading with the anchor #nope in '
        'docs/other.md',
        'docs/page.md:22: link #nope2: no heading with the anchor #nope2 in docs/page.md',
        'docs/page.md:24: link gone.md: gone.md does not exist',
    ]), '\n'.join(problems)
    assert parser_options(['tools/fake_tool.py'], root)['tools/fake_tool.py']['how'] == \
        'stand-ins'


def test_checker_on_real_scripts(tmp_path):
    """A renamed flag of a real tool (directly and through dist_test.sh) and a moved real
    tool are reported; their real flags are not."""
    page = osp.join(str(tmp_path), 'page.md')
    _write(page, '```bash\n'
           'python tools/misc/dataset_config.py T.json --val-annotations V.json --val-img v\n'
           'bash tools/dist_test.sh CFG CKPT 2 --panoptic-output P --per-class\n'
           'python tools/analysis/audit_memories.py CFG\n'
           'bash tools/main_job.sh --torch 2.11\n'
           '```\n')
    problems, checked = check_docs([page], ROOT)
    where = osp.relpath(page, ROOT)
    assert checked == 4
    assert sorted(problems) == sorted([
        f'{where}:2: --val-annotations is not an option of tools/misc/dataset_config.py',
        f'{where}:3: --panoptic-output is not an option of tools/dist_test.sh (nor of '
        'tools/test.py, which it forwards to)',
        f'{where}:4: tools/analysis/audit_memories.py does not exist',
        f'{where}:5: --torch is not an option of tools/main_job.sh',
    ]), '\n'.join(problems)


def test_github_slugs():
    """Anchors as GitHub makes them (hand-checked against GitHub's rendering rules)."""
    cases = {
        'Does the memory help? The stand-in for CLIP and the low-label benchmark':
            'does-the-memory-help-the-stand-in-for-clip-and-the-low-label-benchmark',
        'Table 11 — robustness, COCO-C (2000 val2017 images; clean / mean of 16 corruptions)':
            'table-11--robustness-coco-c-2000-val2017-images-clean--mean-of-16-corruptions',
        '`pq_eval_speed.py`': 'pq_eval_speedpy',
        'The GPU machine (`tools/gpu_wheels.sh`, `tools/gpu_acceptance.sh`)':
            'the-gpu-machine-toolsgpu_wheelssh-toolsgpu_acceptancesh',
        'λ_things / λ_stuff': 'λ_things--λ_stuff',
        'See [the guide](x.md) *now*': 'see-the-guide-now',
    }
    assert {h: github_slug(h) for h in cases} == cases


def test_duplicate_headings_are_numbered(tmp_path):
    page = osp.join(str(tmp_path), 'p.md')
    _write(page, '# Notes\n\n```bash\n# Notes inside code is no heading\n```\n## Notes\n'
           '### Notes ###\n')
    assert heading_anchors(page) == {'notes', 'notes-1', 'notes-2'}


# ---------------------------------------------------------------------------- subprocess

class _Captured(BaseException):
    """Raised instead of parsing: carries the parser a script built."""

    def __init__(self, parser):
        super().__init__('parser captured')
        self.parser = parser


class _StubMeta(type):
    """Stand-ins are classes: attributes, calls, items and operators give stand-ins, so
    module code (``class Net(nn.Module)``, ``@MODELS.register_module()``,
    ``'cuda' if torch.cuda.is_available() else 'cpu'``) runs."""

    def __getattr__(cls, name):
        if name.startswith('__') and name.endswith('__'):
            raise AttributeError(name)
        return _stub(f'{cls.__name__}.{name}')

    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(
                args[0], _StubMeta):
            return args[0]  # used as a decorator
        return _stub(cls.__name__ + '()')

    def __getitem__(cls, item):
        return cls

    def __iter__(cls):
        return iter(())

    def __len__(cls):
        return 0

    def __bool__(cls):
        return False

    def __contains__(cls, item):
        return False

    def __int__(cls):
        return 0

    __index__ = __int__

    def __float__(cls):
        return 0.0

    def __enter__(cls):
        return cls

    def __exit__(cls, *exc):
        return False

    def _same(cls, *args):
        return cls

    def _false(cls, other):
        return False

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _same
    __rtruediv__ = __floordiv__ = __mod__ = __pow__ = __neg__ = __pos__ = __matmul__ = _same
    __lt__ = __le__ = __gt__ = __ge__ = _false


def _stub(name: str) -> type:
    return _StubMeta(name.rsplit('.', 1)[-1] or 'Stub', (), {'__module__': 'stand-in'})


class _StubModule(types.ModuleType):
    """A heavy package (or a module that cannot import under the stand-ins)."""

    def __getattr__(self, name):
        if name == '__version__':
            return '0.0.0'
        if name.startswith('__') and name.endswith('__'):
            raise AttributeError(name)
        value = _stub(f'{self.__name__}.{name}')
        setattr(self, name, value)
        return value


class _StubLoader(importlib.abc.Loader):

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


class _TolerantLoader(importlib.abc.Loader):
    """The real loader; a module whose code fails under the stand-ins becomes one."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            self.loader.exec_module(module)
        except Exception:  # noqa: BLE001 (what a stand-in cannot give; the module is a stub)
            try:
                module.__class__ = _StubModule
            except TypeError:
                raise


def _is_stdlib(top: str) -> bool:
    names = getattr(sys, 'stdlib_module_names', None)  # python >= 3.10
    if names is not None:
        return top in names
    import sysconfig
    spec = importlib.machinery.PathFinder.find_spec(top, [sysconfig.get_paths()['stdlib']])
    return top in sys.builtin_module_names or spec is not None


class _StandInFinder(importlib.abc.MetaPathFinder):

    def find_spec(self, name, path, target=None):
        top = name.partition('.')[0]
        if top in HEAVY:
            return importlib.util.spec_from_loader(name, _StubLoader(), is_package=True)
        if _is_stdlib(top):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = _TolerantLoader(spec.loader)
                return spec
        return None


def _options_of(parser: argparse.ArgumentParser) -> Set[str]:
    options = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _options_of(sub)
    return options


def _capture_parsers(root: str, scripts: Sequence[str]) -> Dict[str, dict]:
    """Run each script as ``__main__`` with ``--help`` on stand-ins; return its parser's
    options (or why there are none)."""
    import runpy

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    for name in ('parse_args', 'parse_known_args', 'parse_intermixed_args',
                 'parse_known_intermixed_args'):
        setattr(argparse.ArgumentParser, name, capture)
    sys.meta_path.insert(0, _StandInFinder())
    sys.path.insert(0, root)
    result = {}
    for script in scripts:
        path = osp.join(root, script)
        saved_path, saved_argv = list(sys.path), list(sys.argv)
        sys.argv = [path, '--help']
        try:
            runpy.run_path(path, run_name='__main__')
        except _Captured as captured:
            result[script] = {'options': sorted(_options_of(captured.parser)),
                              'how': 'stand-ins'}
        except BaseException as exc:  # noqa: BLE001 (reported; the test falls back to --help)
            result[script] = {'options': None, 'error': f'{type(exc).__name__}: {exc}'[:500]}
        else:
            result[script] = {'options': None, 'error': 'it returned without parsing arguments'}
        finally:
            sys.path[:], sys.argv = saved_path, saved_argv
    return result


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description='capture the argument parsers of scripts')
    parser.add_argument('--capture-parsers', action='store_true', required=True)
    parser.add_argument('--root', required=True)
    parser.add_argument('--out', required=True)
    parser.add_argument('scripts', nargs='+')
    args = parser.parse_args(argv)
    out, root, scripts = args.out, osp.abspath(args.root), args.scripts
    result = _capture_parsers(root, scripts)
    with open(out, 'w') as f:
        json.dump(result, f)
    return 0


if __name__ == '__main__':
    sys.exit(_main(sys.argv[1:]))
