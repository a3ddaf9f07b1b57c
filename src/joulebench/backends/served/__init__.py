"""Served mode, engine-agnostic: start an OpenAI-compatible server (recipes), drive it with a
load generator (closed loop or Poisson), time every token from the stream, and find the
steady-state window. Engines add only a recipe."""
from .loadgen import LoadGenerator, LoadSpec, SteadyState, poisson_arrivals, steady_state
from .recipes import RECIPES, ServerRecipe, get_recipe
from .server import ServerProcess, free_port
from .session import ServedSession

__all__ = ["LoadGenerator", "LoadSpec", "SteadyState", "poisson_arrivals", "steady_state", "RECIPES",
           "ServerRecipe", "get_recipe", "ServerProcess", "free_port", "ServedSession"]
