"""The web app as a Hugging Face Space: the app_file that README.md's front matter names. Spaces run it
from the repository's root, after `pip install -r requirements.txt` (this project with its `ui` extra).

Models: UI_CLIP, UI_BLIP2, UI_SD (Space variables; default the bundled tiny ones, which run on the free
CPU hardware); UI_MODERATION_URL: a moderation service to ask instead of week 10's app in-process.
Anything else on the command line goes to stage3_moderation.ui (`python deploy/space/app.py --help`).
"""

import os
import sys

from curriculum import cli
from stage3_moderation import ui

if __name__ == "__main__":
    models = [f"--{family}={os.environ.get(f'UI_{family.upper()}', 'tiny')}" for family in ("clip", "blip2", "sd")]
    service = [f"--moderation-url={os.environ['UI_MODERATION_URL']}"] if os.environ.get("UI_MODERATION_URL") else []
    cli.run(ui.main, ["--host=0.0.0.0", "--port=7860", *models, *service, *sys.argv[1:]])  # a Space serves 7860
