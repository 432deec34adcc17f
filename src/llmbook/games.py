"""Games as a language: OpenSpiel transcripts, a GPT that plays through pyspiel, and Chapter 8's measurements.

A game is written as a token sequence ``<start> a_1 a_2 ... a_n <result>``: the action ids of the game (OpenSpiel's
``num_distinct_actions()``, 9 squares of tic-tac-toe, 7 columns of connect four) and one of three result tokens
(first player wins, draw, second player wins). Next-move prediction on these sequences is language modelling on a
language whose meaning, the board, can be checked exactly: ``replay`` plays the moves through pyspiel's own rules.

- Transcripts: ``generate_games`` plays seeded games between named players, ``"random"`` (uniform over the legal
  moves), ``"mcts-N"`` (OpenSpiel's C++ ``MCTSBot`` with N simulations and random rollouts) and ``"solver"`` (an
  exact ``Solver``, a memoised minimax over the states of a small game, choosing among the optimal moves at
  random). ``split_by_game`` keeps identical games on one side of the split.
- The model's bot: ``GPTBot`` is a ``pyspiel.Bot``, so OpenSpiel's ``evaluate_bots`` plays it against OpenSpiel's
  bots (``play_match``). It reads the move history from the state and picks the most probable move, with or without
  masking the illegal ones; without masking an illegal pick is counted and replaced by a random legal move.
- Measurements: ``move_losses`` (next-move loss), ``legal_move_rate``, ``optimal_move_fraction``, and the board
  probe: ``board_states`` (each square empty / the mover's / the opponent's), ``residual_states`` (the residual
  stream after every block), ``probe_data`` (both at every position of some games) and ``board_probe`` (a linear
  probe per square). ``tactics`` finds the positions with a one-move win or a threat to block.
Introduced in Chapter 8.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyspiel
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmbook.gpt import GPT, GPTConfig, lm_loss
from llmbook.trainer import History, Trainer, TrainerConfig, seed_everything

GAMES = ("tic_tac_toe", "connect_four")
RESULTS = ("first player wins", "draw", "second player wins")
# Where each game's observation tensor (planes, *board) keeps the squares of player 0, of player 1 and the empty
# ones (pyspiel's two games order their planes differently; tests/test_games.py checks this against the boards
# pyspiel prints).
_PLANES = {"tic_tac_toe": (2, 1, 0), "connect_four": (0, 1, 2)}
# Each game's left-right mirror as a map of its actions: a mirrored game is as legal as the original and ends the
# same way, so it is a second training game for free.
_MIRRORS = {"tic_tac_toe": (2, 1, 0, 5, 4, 3, 8, 7, 6), "connect_four": (6, 5, 4, 3, 2, 1, 0)}
EMPTY, MINE, THEIRS = 0, 1, 2  # square labels of ``board_states``, relative to the player to move


def load_game(name: str) -> Any:
    """The pyspiel game ``name``, one of ``GAMES``. Introduced in Chapter 8."""
    if name not in GAMES:
        raise ValueError(f"game must be one of {GAMES}, got {name!r}")
    return pyspiel.load_game(name)


@dataclass(frozen=True)
class Transcript:
    """One finished game: its actions and its result, an index into ``RESULTS``. Introduced in Chapter 8."""

    actions: tuple[int, ...]
    result: int


def result_of(returns: Sequence[float]) -> int:
    """The index into ``RESULTS`` of a finished two-player zero-sum game's returns. Introduced in Chapter 8."""
    if len(returns) != 2:
        raise ValueError(f"returns must hold two players' returns, got {list(returns)}")
    return 0 if returns[0] > returns[1] else 2 if returns[0] < returns[1] else 1


def replay(game: Any, actions: Sequence[int]) -> Any:
    """The pyspiel state after ``actions`` from the initial state; an illegal action is a ValueError naming it.

    Introduced in Chapter 8.
    """
    state = game.new_initial_state()
    for i, action in enumerate(actions):
        if state.is_terminal():
            raise ValueError(f"actions[{i}]={action}: the game ended after {i} moves")
        if action not in state.legal_actions():
            raise ValueError(f"actions[{i}]={action} is illegal after {list(actions[:i])}; legal: "
                             f"{state.legal_actions()}")
        state.apply_action(action)
    return state


@dataclass(frozen=True)
class Vocabulary:
    """Tokens of a game: the actions 0 .. n_actions - 1, then <start>, the three results and <pad>.

    ``context_length`` holds the longest game: <start>, ``max_moves`` actions and the result. Introduced in
    Chapter 8.
    """

    n_actions: int
    max_moves: int

    @classmethod
    def of(cls, game: Any) -> Vocabulary:
        return cls(game.num_distinct_actions(), game.max_game_length())

    @property
    def start_id(self) -> int:
        return self.n_actions

    @property
    def result_ids(self) -> tuple[int, int, int]:
        return (self.n_actions + 1, self.n_actions + 2, self.n_actions + 3)

    @property
    def pad_id(self) -> int:
        return self.n_actions + 4

    @property
    def vocab_size(self) -> int:
        return self.n_actions + 5

    @property
    def context_length(self) -> int:
        return self.max_moves + 2

    def encode(self, transcript: Transcript) -> list[int]:
        """<start> actions <result>."""
        if any(not 0 <= a < self.n_actions for a in transcript.actions) or len(transcript.actions) > self.max_moves:
            raise ValueError(f"transcript must hold at most {self.max_moves} actions in [0, {self.n_actions}), got "
                             f"{list(transcript.actions)}")
        return [self.start_id, *transcript.actions, self.result_ids[transcript.result]]

    def decode(self, tokens: Sequence[int]) -> Transcript:
        """The transcript of <start> actions <result> (padding after it is ignored)."""
        tokens = [int(t) for t in tokens]
        while tokens and tokens[-1] == self.pad_id:
            tokens.pop()
        if len(tokens) < 2 or tokens[0] != self.start_id or tokens[-1] not in self.result_ids:
            raise ValueError("tokens must be <start> actions <result>, optionally followed by <pad>")
        actions = tuple(tokens[1:-1])
        if any(not 0 <= a < self.n_actions for a in actions):
            raise ValueError(f"tokens between <start> and <result> must be actions in [0, {self.n_actions})")
        return Transcript(actions, self.result_ids.index(tokens[-1]))

    def batch(self, transcripts: Sequence[Transcript]) -> Tensor:
        """(B, context_length) token ids, each game padded with <pad>."""
        rows = [self.encode(t) for t in transcripts]
        return torch.tensor([r + [self.pad_id] * (self.context_length - len(r)) for r in rows], dtype=torch.long)


class Solver:
    """Exact values of a small two-player zero-sum game by memoised minimax (tic-tac-toe: 5,478 distinct states).

    ``value(state)`` is the return of the player to move under optimal play by both (+1 win, 0 draw, -1 loss);
    ``optimal_actions(state)`` the moves that keep it. States are keyed by pyspiel's string of the state and the
    player to move, which for tic-tac-toe is the board. Introduced in Chapter 8.
    """

    def __init__(self, game: Any) -> None:
        self.game = game
        self.values: dict[tuple[str, int], float] = {}

    def value(self, state: Any) -> float:
        if state.is_terminal():
            raise ValueError("state must have a player to move; a finished game's value is state.returns()")
        key = (str(state), state.current_player())
        if key not in self.values:
            self.values[key] = max(-self._after(state, a) for a in state.legal_actions())
        return self.values[key]

    def _after(self, state: Any, action: int) -> float:
        """The value of the position after ``action`` for the player who then moves (the opponent)."""
        child = state.child(action)
        if child.is_terminal():
            return -float(child.returns()[state.current_player()])
        return self.value(child)

    def action_values(self, state: Any) -> dict[int, float]:
        """Each legal move's value for the player to move."""
        return {a: -self._after(state, a) for a in state.legal_actions()}

    def optimal_actions(self, state: Any) -> list[int]:
        values = self.action_values(state)
        best = max(values.values())
        return [a for a, v in values.items() if v == best]


class FunctionBot(pyspiel.Bot):
    """An OpenSpiel bot that plays ``choose(state)``: baselines as players (e.g. the most frequent move).

    Introduced in Chapter 8."""

    def __init__(self, choose: Callable[[Any], int]) -> None:
        pyspiel.Bot.__init__(self)
        self.choose = choose

    def step(self, state: Any) -> int:
        return int(self.choose(state))

    def restart_at(self, state: Any) -> None:
        pass

    def inform_action(self, state: Any, player: int, action: int) -> None:
        pass


def _random_choice(choices: Callable[[Any], list[int]], seed: int) -> FunctionBot:
    """A uniform choice among ``choices(state)``, seeded: the random player's and the solver's bot."""
    rng = random.Random(seed)
    return FunctionBot(lambda state: int(rng.choice(choices(state))))


def make_bot(game: Any, player: str, seed: int, solver: Solver | None = None) -> Any:
    """An OpenSpiel bot: ``"random"``, ``"mcts-N"`` (C++ MCTS, N simulations, UCT c = 2, one random rollout per
    leaf) or ``"solver"`` (uniform among the optimal moves of ``solver``). Introduced in Chapter 8."""
    if player == "random":
        return _random_choice(lambda state: state.legal_actions(), seed)
    if player == "solver":
        if solver is None:
            raise ValueError("player 'solver' needs a Solver of the game (solver=Solver(game))")
        return _random_choice(solver.optimal_actions, seed)
    if player.startswith("mcts-") and player[5:].isdigit() and int(player[5:]) > 0:
        return pyspiel.MCTSBot(game, pyspiel.RandomRolloutEvaluator(1, seed), 2.0, int(player[5:]), 1000, False,
                               seed, False)
    raise ValueError(f"player must be 'random', 'mcts-N' (N > 0 simulations) or 'solver', got {player!r}")


def play_game(game: Any, bots: Sequence[Any]) -> Transcript:
    """Play one game between two bots (player 0 first) and keep its moves (``pyspiel.evaluate_bots`` keeps only
    the returns). Introduced in Chapter 8."""
    state = game.new_initial_state()
    for bot in bots:
        bot.restart_at(state)
    while not state.is_terminal():
        player = state.current_player()
        action = bots[player].step(state)
        for other, bot in enumerate(bots):
            if other != player:
                bot.inform_action(state, player, action)
        state.apply_action(action)
    return Transcript(tuple(state.history()), result_of(state.returns()))


def _seed(seed: int, game_index: int, player: int) -> int:
    return (seed * 1_000_003 + 2 * game_index + player) % 2**31


def generate_games(game: Any, players: tuple[str, str], n_games: int, seed: int,
                   solver: Solver | None = None) -> list[Transcript]:
    """``n_games`` games of ``players[0]`` (moving first) against ``players[1]``; game i's bots are seeded from
    (seed, i), so the same seed gives the same games. Introduced in Chapter 8."""
    if not isinstance(n_games, int) or n_games < 1:
        raise ValueError(f"n_games must be a positive integer, got {n_games!r}")
    return [play_game(game, [make_bot(game, players[p], _seed(seed, i, p), solver) for p in range(2)])
            for i in range(n_games)]


def mirrored(name: str, transcripts: Sequence[Transcript]) -> list[Transcript]:
    """The games of ``name`` reflected left to right (tic-tac-toe's and connect four's boards are symmetric): each
    mirrored game is legal and has the recorded result. Introduced in Chapter 8."""
    if name not in _MIRRORS:
        raise ValueError(f"name must be one of {GAMES}, got {name!r}")
    mirror = _MIRRORS[name]
    return [Transcript(tuple(mirror[a] for a in t.actions), t.result) for t in transcripts]


def split_by_game(transcripts: Sequence[Transcript], test_fraction: float, seed: int
                  ) -> tuple[list[Transcript], list[Transcript]]:
    """(train, test): the distinct games shuffled and split, every copy of a game on the side of its first copy, so
    that no test game was seen in training. Introduced in Chapter 8."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    distinct = sorted({t.actions for t in transcripts})
    random.Random(seed).shuffle(distinct)
    test_games = set(distinct[:max(1, round(test_fraction * len(distinct)))])
    train = [t for t in transcripts if t.actions not in test_games]
    return train, [t for t in transcripts if t.actions in test_games]


def train_on_games(config: GPTConfig, transcripts: Sequence[Transcript], vocab: Vocabulary, batch_size: int,
                   trainer_config: TrainerConfig, test_games: Sequence[Transcript] = ()) -> tuple[GPT, History]:
    """A fresh ``GPT(config)`` (seeded from ``trainer_config.seed``) trained by the book's ``Trainer`` on batches of
    whole games drawn with a generator seeded by the step, with ``lm_loss`` on every token but <pad>.

    With ``test_games`` the history's ``eval["test_move_loss"]`` is the learning curve: the mean ``move_losses``
    (``moves_only``) on those games every ``trainer_config.eval_every`` steps. Introduced in Chapter 8.
    """
    if config.vocab_size != vocab.vocab_size or config.context_length < vocab.context_length:
        raise ValueError(f"config must have vocab_size={vocab.vocab_size} and context_length >= "
                         f"{vocab.context_length}, got {config.vocab_size} and {config.context_length}")
    tokens = vocab.batch(transcripts)  # (N, C)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    lengths = (tokens != vocab.pad_id).sum(1)  # (N,)

    def train_batch(step: int) -> tuple[Tensor]:
        rows = torch.randint(0, len(tokens), (batch_size,), generator=torch.Generator().manual_seed(step))
        return (tokens[rows, :int(lengths[rows].max())],)  # cut to the batch's longest game: no column of pads

    def test_move_loss(model: nn.Module) -> dict[str, float]:
        logits = next_token_logits(cast(GPT, model), vocab, test_games)
        return {"test_move_loss": move_losses(logits, vocab, test_games, moves_only=True).mean().item()}

    if test_games and trainer_config.eval_every == 0:
        raise ValueError("test_games need trainer_config.eval_every > 0 (the steps between evaluations)")
    seed_everything(trainer_config.seed)
    model = GPT(config)
    trainer = Trainer(model, lambda m, b: lm_loss(m(b[0]), b[0], pad_id=vocab.pad_id), train_batch,
                      trainer_config, eval_fn=test_move_loss if test_games else None)
    return model, trainer.fit()


def _move_mask(vocab: Vocabulary, transcripts: Sequence[Transcript]) -> Tensor:
    """(N, C) True at the positions whose next token is a move (position t predicts move t + 1)."""
    lengths = torch.tensor([len(t.actions) for t in transcripts])
    return torch.arange(vocab.context_length)[None, :] < lengths[:, None]


@torch.no_grad()
def next_token_logits(model: GPT, vocab: Vocabulary, transcripts: Sequence[Transcript]) -> Tensor:
    """(N, C, V) logits at every position of each game (eval mode). Introduced in Chapter 8."""
    model.eval()
    device = next(model.parameters()).device
    return model(vocab.batch(transcripts).to(device)).float().cpu()


def legal_masks(game: Any, vocab: Vocabulary, transcripts: Sequence[Transcript]) -> Tensor:
    """(N, C, n_actions) True where the action is legal in the position before move t + 1. Introduced in Chapter 8."""
    masks = torch.zeros(len(transcripts), vocab.context_length, vocab.n_actions, dtype=torch.bool)
    for i, t in enumerate(transcripts):
        state = game.new_initial_state()
        for j, action in enumerate(t.actions):
            masks[i, j, state.legal_actions()] = True
            state.apply_action(action)
    return masks


def move_losses(logits: Tensor, vocab: Vocabulary, transcripts: Sequence[Transcript], moves_only: bool = False
                ) -> Tensor:
    """(M,) cross-entropy in nats of each of the M moves of the games, from logits (N, C, V). With ``moves_only``
    the distribution is first renormalised over the action tokens: the loss of the next move *given that the game
    goes on*, which is what the frequency and uniform baselines predict (they never expect the game to end).
    Introduced in Chapter 8."""
    if moves_only:
        logits = logits[..., :vocab.n_actions]
    tokens = vocab.batch(transcripts)
    targets = tokens[:, 1:]  # position t predicts token t + 1
    mask = _move_mask(vocab, transcripts)[:, :-1]
    return F.cross_entropy(logits[:, :-1][mask], targets[mask], reduction="none")


def legal_move_rate(logits: Tensor, legal: Tensor, vocab: Vocabulary, transcripts: Sequence[Transcript]) -> float:
    """The fraction of positions whose most probable next token (over the whole vocabulary, no masking) is a legal
    move. ``legal`` is ``legal_masks``. Introduced in Chapter 8."""
    mask = _move_mask(vocab, transcripts)
    picks = logits.argmax(-1)[mask]  # (M,)
    allowed = F.pad(legal, (0, vocab.vocab_size - vocab.n_actions))[mask]  # (M, V); specials are never legal
    return float(allowed.gather(1, picks[:, None]).float().mean())


def move_number_log_probs(transcripts: Sequence[Transcript], vocab: Vocabulary, alpha: float = 0.5) -> Tensor:
    """(max_moves, n_actions) log P(action | move number), add-alpha counts over the games: the frequency baseline.

    Introduced in Chapter 8."""
    counts = torch.full((vocab.max_moves, vocab.n_actions), alpha, dtype=torch.float64)
    for t in transcripts:
        for j, a in enumerate(t.actions):
            counts[j, a] += 1
    return (counts / counts.sum(1, keepdim=True)).log()


class GPTBot(pyspiel.Bot):
    """The book's GPT as an OpenSpiel bot: it reads the state's move history as <start> a_1 .. a_t and plays the
    most probable next move (``temperature`` > 0: samples). With ``mask`` the illegal moves get probability 0;
    without it an illegal pick (a taken square, a full column, a special token) is counted in ``illegal`` and
    replaced by a uniformly random legal move. ``moves`` counts the moves it chose. Introduced in Chapter 8.
    """

    def __init__(self, model: GPT, vocab: Vocabulary, mask: bool = True, temperature: float = 0.0,
                 seed: int = 0) -> None:
        pyspiel.Bot.__init__(self)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = the most probable move), got {temperature}")
        self.model, self.vocab, self.mask, self.temperature = model, vocab, mask, temperature
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.moves = self.illegal = 0

    @torch.no_grad()
    def move_probabilities(self, state: Any) -> Tensor:
        """(V,) the model's next-token distribution at ``state`` (illegal moves at 0 when masking)."""
        self.model.eval()
        device = next(self.model.parameters()).device
        tokens = torch.tensor([[self.vocab.start_id, *state.history()]], device=device)
        logits = self.model(tokens)[0, -1].float().cpu()  # (V,)
        if self.mask:
            legal = torch.zeros_like(logits, dtype=torch.bool)
            legal[state.legal_actions()] = True
            logits = logits.masked_fill(~legal, -math.inf)
        return logits.softmax(-1)

    def step(self, state: Any) -> int:
        probs = self.move_probabilities(state)
        if self.temperature == 0:
            action = int(probs.argmax())
        else:
            action = int(torch.multinomial(probs ** (1 / self.temperature), 1, generator=self.generator))
        self.moves += 1
        legal = state.legal_actions()
        if action not in legal:
            self.illegal += 1
            action = self.rng.choice(legal)
        return action

    def restart_at(self, state: Any) -> None:
        pass

    def inform_action(self, state: Any, player: int, action: int) -> None:
        pass


@dataclass(frozen=True)
class MatchResult:
    """Wins, draws and losses of a bot over ``n`` games. Introduced in Chapter 8."""

    wins: int
    draws: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.draws + self.losses

    @property
    def score(self) -> float:
        """(wins + draws / 2) / n: 1 always wins, 0.5 an even match."""
        return (self.wins + self.draws / 2) / self.n

    @property
    def score_se(self) -> float:
        """Standard error of the score over n independent games (each worth 1, 1/2 or 0)."""
        mean_square = (self.wins + self.draws / 4) / self.n
        return math.sqrt(max(mean_square - self.score**2, 0.0) / self.n)


def play_match(game: Any, bot: Any, opponent: Callable[[int], Any], n_games: int, seed: int) -> MatchResult:
    """``n_games`` games of ``bot`` against ``opponent(seed_i)`` (a fresh bot per game) with OpenSpiel's
    ``evaluate_bots``; ``bot`` moves first in the even-numbered games, second in the others. Introduced in
    Chapter 8."""
    if not isinstance(n_games, int) or n_games < 1:
        raise ValueError(f"n_games must be a positive integer, got {n_games!r}")
    counts = [0, 0, 0]
    for i in range(n_games):
        side = i % 2
        other = opponent(_seed(seed, i, 1 - side))
        bots = [bot, other] if side == 0 else [other, bot]
        returns = pyspiel.evaluate_bots(game.new_initial_state(), bots, _seed(seed, i, 2))
        counts[0 if returns[side] > 0 else 1 if returns[side] == 0 else 2] += 1
    return MatchResult(*counts)


def optimal_move_fraction(choose: Callable[[Any], int], solver: Solver, states: Sequence[Any]) -> float:
    """The fraction of ``states`` (with a player to move) where ``choose(state)`` keeps the solver's value.

    Introduced in Chapter 8."""
    if not states:
        raise ValueError("states must hold at least one position")
    return sum(choose(s) in solver.optimal_actions(s) for s in states) / len(states)


def winning_moves(state: Any) -> list[int]:
    """The legal moves that end the game at once with a win for the player to move. Introduced in Chapter 8."""
    if state.is_terminal():
        raise ValueError("state must have a player to move, got a finished game")
    mover, wins = state.current_player(), []
    for action in state.legal_actions():
        after = state.child(action)
        if after.is_terminal() and after.returns()[mover] > 0:
            wins.append(action)
    return wins


def safe_moves(state: Any) -> list[int]:
    """The legal moves after which the opponent has no winning move (a move that wins at once is safe).

    Introduced in Chapter 8."""
    if state.is_terminal():
        raise ValueError("state must have a player to move, got a finished game")
    safe = []
    for action in state.legal_actions():
        after = state.child(action)
        if after.is_terminal() or not winning_moves(after):
            safe.append(action)
    return safe


@dataclass(frozen=True)
class Tactic:
    """A position with a one-move tactic: ``kind`` "win" (the mover can win at once; ``good`` are the winning
    moves) or "block" (no win, but the opponent threatens one that some of the legal moves stop; ``good`` are
    those). ``played`` is the move the transcript made there. Introduced in Chapter 8."""

    state: Any
    kind: str
    good: tuple[int, ...]
    played: int

    @property
    def chance(self) -> float:
        """The probability that a uniformly random legal move is good."""
        return len(self.good) / len(self.state.legal_actions())


def tactics(game: Any, transcripts: Sequence[Transcript]) -> list[Tactic]:
    """Every position of the transcripts with a one-move tactic (``Tactic``): the positions where a player who
    reads the board does better than a random legal move, and a player who does not cannot tell. Introduced in
    Chapter 8."""
    found = []
    for transcript in transcripts:
        state = game.new_initial_state()
        for action in transcript.actions:
            wins = winning_moves(state)
            if wins:
                found.append(Tactic(state.clone(), "win", tuple(wins), action))
            else:
                safe = safe_moves(state)
                if 0 < len(safe) < len(state.legal_actions()):
                    found.append(Tactic(state.clone(), "block", tuple(safe), action))
            state.apply_action(action)
    return found


def good_move_fraction(choose: Callable[[Any], int], positions: Sequence[Tactic]) -> float:
    """The fraction of ``positions`` (``tactics``) where ``choose(state)`` is one of the good moves. Introduced in
    Chapter 8."""
    if not positions:
        raise ValueError("positions must hold at least one position")
    return sum(choose(p.state) in p.good for p in positions) / len(positions)


def board_states(game: Any, name: str, transcript: Transcript, relative: bool = True) -> Tensor:
    """(n + 1, squares) the board before each of the n moves and after the last: each square ``EMPTY``, ``MINE``
    (the player to move at that point) or ``THEIRS``, read from pyspiel's observation tensor. With ``relative``
    False the labels are absolute colours instead: ``MINE`` is the first player's piece, ``THEIRS`` the second's.
    Introduced in Chapter 8."""
    if name not in _PLANES:
        raise ValueError(f"name must be one of {GAMES}, got {name!r}")
    p0, p1, _ = _PLANES[name]
    state, boards = game.new_initial_state(), []
    for j in range(len(transcript.actions) + 1):
        planes = torch.tensor(state.observation_tensor(0)).view(game.observation_tensor_shape())
        planes = planes.flatten(1)  # (3, squares)
        mover = j % 2 if relative else 0  # the player to move after j moves
        board = torch.full((planes.shape[1],), EMPTY, dtype=torch.long)
        board[planes[p0 if mover == 0 else p1] == 1] = MINE
        board[planes[p1 if mover == 0 else p0] == 1] = THEIRS
        boards.append(board)
        if j < len(transcript.actions):
            state.apply_action(transcript.actions[j])
    return torch.stack(boards)


@torch.no_grad()
def residual_states(model: GPT, tokens: Tensor) -> Tensor:
    """(n_layers + 1, B, T, D): the residual stream of ``model`` on tokens (B, T), after the embeddings (0) and
    after each block (the last before the final LayerNorm). The probe reads these. Introduced in Chapter 8."""
    model.eval()
    x = model._embed(tokens)  # h_0 = token + position embeddings, (B, T, D)
    states = [x]
    for i, layer in enumerate(model.layers):
        x, _ = layer(x, mask=model._layer_mask(i, tokens.shape[1], 0, tokens.device), is_causal=True)
        states.append(x)
    return torch.stack(states).float().cpu()


def probe_data(game: Any, name: str, vocab: Vocabulary, model: GPT, transcripts: Sequence[Transcript],
               relative: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """What a board probe is fitted on, at the P positions of the games (each game's n moves give n + 1 positions,
    the empty board included): the residual streams (n_layers + 1, P, D), the boards (P, squares) of
    ``board_states`` and the move counts (P, 2 n_actions) of ``move_count_features``. The position after move j is
    read at the token of move j, the empty board at <start>. Introduced in Chapter 8."""
    if not transcripts:
        raise ValueError("transcripts must hold at least one game")
    device = next(model.parameters()).device
    states = residual_states(model, vocab.batch(transcripts).to(device))  # (L + 1, N, C, D)
    xs, boards, counts = [], [], []
    for i, transcript in enumerate(transcripts):
        n = len(transcript.actions) + 1
        xs.append(states[:, i, :n])
        boards.append(board_states(game, name, transcript, relative))
        counts.append(move_count_features(transcript, vocab.n_actions))
    return torch.cat(xs, 1), torch.cat(boards), torch.cat(counts)


def board_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, n_classes: int = 3,
                l2: float = 1e-3, max_iter: int = 50) -> Tensor:
    """(S,) test accuracy of a linear probe for each of S squares: features (N, D), labels (N, S).

    Each square has its own multinomial logistic regression, the model of ``llmbook.baselines.logistic_regression``
    (standardised features, mean cross-entropy plus ``l2`` times the squared weights). All S are fitted in one
    L-BFGS run of ``max_iter`` iterations: the objective is the sum of the S independent losses, so its minimum is
    theirs. One run is much faster than S: a square that is always empty in training never converges (its weights
    grow without end) and would use up every iteration of its own run. Introduced in Chapter 8."""
    if train_x.dim() != 2 or train_y.dim() != 2 or train_y.shape[0] != train_x.shape[0]:
        raise ValueError(f"train_x must be (N, D) and train_y (N, S), got {tuple(train_x.shape)} and "
                         f"{tuple(train_y.shape)}")
    if test_x.shape[1:] != train_x.shape[1:] or test_y.shape != (test_x.shape[0], train_y.shape[1]):
        raise ValueError(f"test_x must be (M, {train_x.shape[1]}) and test_y (M, {train_y.shape[1]}), got "
                         f"{tuple(test_x.shape)} and {tuple(test_y.shape)}")
    S = train_y.shape[1]
    mean, std = train_x.mean(0), train_x.std(0).nan_to_num(1.0).clamp(min=1e-2)
    x = (train_x - mean) / std  # (N, D)
    weights = torch.zeros(train_x.shape[1], S * n_classes, requires_grad=True)  # (D, S C): one matrix product
    bias = torch.zeros(S * n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        optimizer.zero_grad()
        logits = (x @ weights + bias).view(-1, S, n_classes)  # (N, S, C)
        losses = F.cross_entropy(logits.flatten(0, 1), train_y.flatten(), reduction="none").view(-1, S)
        loss = losses.mean(0).sum() + l2 * weights.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    with torch.no_grad():
        logits = (((test_x - mean) / std) @ weights + bias).view(-1, S, n_classes)
    return (logits.argmax(-1) == test_y).float().mean(0)


def move_count_features(transcript: Transcript, n_actions: int) -> Tensor:
    """(n + 1, 2 n_actions): before each move, how often each action was played by the player to move and by the
    opponent: what a linear probe can read from the move tokens alone, without a model. Introduced in Chapter 8."""
    counts = torch.zeros(2, n_actions)  # counts[p]: actions of player p
    rows = []
    for j in range(len(transcript.actions) + 1):
        mover = j % 2
        rows.append(torch.cat([counts[mover], counts[1 - mover]]))
        if j < len(transcript.actions):
            counts[mover, transcript.actions[j]] += 1
    return torch.stack(rows)
