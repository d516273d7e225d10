"""Week 12: a terminal quiz over interview/questions.md.

Questions come in random order. Think of your answer, press Enter to see the repository's, then
run the demo that shows it (r), go on (Enter) or stop (q).

    python -m interview.drill                   the quiz, interactive
    python -m interview.drill --list            the questions, numbered
    python -m interview.drill --no-input --n 3  three questions with their answers, no prompts
    python -m interview.drill --seed 7          another order
"""

import random
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from curriculum import cli

QUESTIONS = Path(__file__).with_name("questions.md")


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    demo: str  # a shell command, or "" when there is none yet


def load(path=QUESTIONS):
    """Each '## ' heading is a question; its paragraphs the answer; a 'Demo: `cmd`' line the demo."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise cli.UserError(f"{path} is not UTF-8 text: save it as UTF-8") from None
    questions = []
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        demo = re.search(r"^Demo: `([^`]+)`", body, flags=re.M)
        answer = re.sub(r"^Demo:.*$", "", body, flags=re.M)
        answer = re.sub(r"<!--.*?-->", "", answer, flags=re.S).strip()  # the docs checks' marks, not for the learner
        questions.append(Question(heading.strip(), answer, demo.group(1) if demo else ""))
    if not questions:
        raise cli.UserError(f"no '## ' questions in {path}")
    return questions


def demo_argv(command):
    """The demo as an argument list, run with this interpreter when it starts with `python`."""
    argv = shlex.split(command)
    return [sys.executable] + argv[1:] if argv[0] == "python" else argv


def run_demo(question):
    if not question.demo:
        print("(no demo for this one yet)")
        return None
    print(f"$ {question.demo}")
    return subprocess.run(demo_argv(question.demo)).returncode


def ask(question, number, total, read=None):
    """One round; returns False when the learner quits. `read` defaults to input()."""
    read = read or input
    print(f"\n[{number}/{total}] {question.text}")
    if read("   (think, then Enter for the answer; q quits) ").strip().lower() == "q":
        return False
    print(f"\n{question.answer}\n")
    while True:
        if question.demo:
            print(f"   demo: {question.demo}")
        choice = read("   r runs the demo, Enter goes on, q quits: ").strip().lower()
        if choice == "q":
            return False
        if choice != "r":
            return True
        run_demo(question)


def order(questions, seed, n):
    shuffled = random.Random(seed).sample(questions, len(questions))
    return shuffled[:n] if n else shuffled


def build_parser():
    parser = cli.Parser(prog="python -m interview.drill", description=__doc__, formatter_class=cli.RawHelp)
    parser.add_argument("--list", action="store_true", help="print the questions and stop")
    parser.add_argument("--no-input", action="store_true", help="print questions and answers, ask nothing")
    parser.add_argument(
        "--n", type=cli.Count(1, 1000), help="how many questions, up to 1,000 (default all; more asks them all)"
    )
    parser.add_argument("--seed", type=cli.Seed(), help="question order (default: a new one each time)")
    parser.add_argument(
        "--questions", type=cli.InFile(".md"), default=str(QUESTIONS), help="a questions file in the same format"
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    questions = load(args.questions)
    if args.list:
        for i, q in enumerate(questions, 1):
            print(f"{i:>2}. {q.text}")
        return
    chosen = order(questions, args.seed, args.n)
    if args.no_input:
        for i, q in enumerate(chosen, 1):
            print(f"\n[{i}/{len(chosen)}] {q.text}\n\n{q.answer}\n\n   demo: {q.demo or '(none yet)'}")
        return
    asked = 0
    try:
        for i, q in enumerate(chosen, 1):
            if not ask(q, i, len(chosen)):
                break
            asked = i
    except EOFError:  # stdin closed: stop like q
        pass
    print(f"\n{asked} of {len(chosen)} questions done.")


if __name__ == "__main__":
    cli.run(main)
