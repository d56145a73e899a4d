from shared.service import run

from .app import definition

run(definition)
