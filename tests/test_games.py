"""llmbook.games: OpenSpiel transcripts, the exact solver, the GPT bot and the board probe (Chapter 8)."""

import dataclasses

import pytest
import torch

pyspiel = pytest.importorskip("pyspiel")

from llmbook.baselines import probe_accuracy  # noqa: E402
from llmbook.games import (  # noqa: E402
    EMPTY,
    MINE,
    THEIRS,
    FunctionBot,
    GPTBot,
    MatchResult,
    Solver,
    Transcript,
    Vocabulary,
    board_probe,
    board_states,
    generate_games,
    good_move_fraction,
    legal_masks,
    legal_move_rate,
    load_game,
    make_bot,
    mirrored,
    move_count_features,
    move_losses,
    next_token_logits,
    optimal_move_fraction,
    play_match,
    probe_data,
    replay,
    residual_states,
    result_of,
    safe_moves,
    split_by_game,
    tactics,
    train_on_games,
    winning_moves,
)
from llmbook.gpt import GPT, gpt2_config  # noqa: E402
from llmbook.trainer import TrainerConfig  # noqa: E402


@pytest.fixture(scope="module")
def ttt():
    return load_game("tic_tac_toe")


@pytest.fixture(scope="module")
def c4():
    return load_game("connect_four")


@pytest.fixture(scope="module")
def solver(ttt):
    return Solver(ttt)


def tiny_gpt(vocab, seed=0):
    torch.manual_seed(seed)
    return GPT(gpt2_config(2, 16, 2, vocab_size=vocab.vocab_size, context_length=vocab.context_length,
                           dropout=0.0))


@pytest.mark.parametrize("players", [("random", "random"), ("mcts-5", "random"), ("mcts-5", "mcts-5")])
def test_transcripts_replay_to_their_recorded_result(c4, players):
    games = generate_games(c4, players, 20, seed=3)
    for game in games:
        state = replay(c4, game.actions)
        assert state.is_terminal()
        assert result_of(state.returns()) == game.result


def test_solver_transcripts_replay_and_are_all_draws(ttt, solver):
    games = generate_games(ttt, ("solver", "solver"), 30, seed=0, solver=solver)
    assert all(replay(ttt, g.actions).is_terminal() for g in games)
    assert {g.result for g in games} == {1}  # optimal play draws
    assert len({g.actions for g in games}) > 1  # ties among optimal moves are broken at random


def test_seeding_reproduces_games_and_another_seed_changes_them(c4):
    for players in (("random", "random"), ("mcts-10", "mcts-10")):
        a = generate_games(c4, players, 8, seed=1)
        assert a == generate_games(c4, players, 8, seed=1)
        assert a != generate_games(c4, players, 8, seed=2)


def test_solver_values_of_known_positions(ttt, solver):
    assert solver.value(ttt.new_initial_state()) == 0  # tic-tac-toe is a draw
    # x in two corners of the top row, o elsewhere: x to move wins, at once with the square between them
    state = replay(ttt, [0, 4, 2, 8])
    assert solver.value(state) == 1 and 1 in solver.optimal_actions(state)
    assert solver.action_values(state)[5] == 0  # o blocks the row and x has no second threat: a draw
    # x holds two squares of the top row: o must block at once, and then it is a draw
    state = replay(ttt, [0, 4, 1])
    assert solver.value(state) == 0 and solver.optimal_actions(state) == [2]
    # x took a corner, o an edge next to it: x wins with best play
    assert solver.value(replay(ttt, [0, 1])) == 1
    # x took the centre, o a corner: a draw; o on an edge instead loses
    assert solver.value(replay(ttt, [4, 0])) == 0
    assert solver.value(replay(ttt, [4, 1])) == 1
    assert len(solver.values) <= 4520  # the non-terminal states with a player to move
    with pytest.raises(ValueError, match="player to move"):
        solver.value(replay(ttt, [0, 3, 1, 4, 2]))


def test_encode_decode_round_trip(c4):
    vocab = Vocabulary.of(c4)
    assert (vocab.n_actions, vocab.vocab_size, vocab.context_length) == (7, 12, 44)
    for game in generate_games(c4, ("random", "random"), 10, seed=0):
        tokens = vocab.encode(game)
        assert tokens[0] == vocab.start_id and tokens[-1] == vocab.result_ids[game.result]
        assert vocab.decode(tokens) == game
        assert vocab.decode(tokens + [vocab.pad_id] * 3) == game
    batch = vocab.batch(generate_games(c4, ("random", "random"), 4, seed=0))
    assert batch.shape == (4, 44) and int(batch.max()) == vocab.pad_id


def test_split_by_game_keeps_copies_together(ttt, solver):
    games = generate_games(ttt, ("solver", "solver"), 200, seed=0, solver=solver)
    train, test = split_by_game(games, 0.25, seed=0)
    assert len(train) + len(test) == len(games) and test
    assert not {g.actions for g in train} & {g.actions for g in test}


def test_masked_bot_only_plays_legal_moves(c4, ttt):
    for game in (ttt, c4):
        vocab = Vocabulary.of(game)
        bot = GPTBot(tiny_gpt(vocab), vocab, mask=True)
        result = play_match(game, bot, lambda seed, game=game: make_bot(game, "random", seed), 12, seed=0)
        assert result.n == 12
        assert bot.moves > 40 and bot.illegal == 0
        # also in many positions it never reached: every move the masked bot picks is legal
        for t in generate_games(game, ("random", "random"), 10, seed=5):
            for j in range(len(t.actions)):
                state = replay(game, t.actions[:j])
                assert bot.step(state) in state.legal_actions()
        assert bot.illegal == 0


class AlwaysSquareZero(GPTBot):
    """A GPT bot whose model always wants square 0."""

    def move_probabilities(self, state):
        return torch.nn.functional.one_hot(torch.tensor(0), self.vocab.vocab_size).float()


def test_unmasked_bot_counts_illegal_picks_and_plays_a_legal_move(ttt):
    vocab = Vocabulary.of(ttt)
    bot = AlwaysSquareZero(tiny_gpt(vocab), vocab, mask=False, seed=0)
    assert bot.step(ttt.new_initial_state()) == 0 and bot.illegal == 0
    state = replay(ttt, [0])  # square 0 is taken
    moves = {bot.step(state) for _ in range(30)}
    assert moves <= set(state.legal_actions()) and len(moves) > 1  # a random legal move instead
    assert bot.illegal == 30 and bot.moves == 31


def test_legal_move_rate_of_a_model_that_always_picks_one_square(ttt):
    vocab = Vocabulary.of(ttt)
    games = generate_games(ttt, ("random", "random"), 50, seed=0)
    logits = torch.zeros(len(games), vocab.context_length, vocab.vocab_size)
    logits[..., 4] = 1.0  # always the centre: legal until someone has taken it
    expected = [4 not in g.actions[:j] for g in games for j in range(len(g.actions))]
    rate = legal_move_rate(logits, legal_masks(ttt, vocab, games), vocab, games)
    assert rate == pytest.approx(sum(expected) / len(expected))
    assert move_losses(torch.zeros_like(logits), vocab, games).mean() == pytest.approx(
        torch.tensor(float(vocab.vocab_size)).log())


def test_clear_errors(ttt, c4):
    with pytest.raises(ValueError, match="game must be one of"):
        load_game("chess")
    with pytest.raises(ValueError, match=r"actions\[1\]=0 is illegal"):
        replay(ttt, [0, 0])
    with pytest.raises(ValueError, match="game ended"):
        replay(ttt, [0, 3, 1, 4, 2, 5])
    with pytest.raises(ValueError, match="player must be"):
        make_bot(c4, "mcts-0", 0)
    with pytest.raises(ValueError, match="needs a Solver"):
        make_bot(ttt, "solver", 0)
    with pytest.raises(ValueError, match="n_games"):
        generate_games(c4, ("random", "random"), 0, seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_game([], 1.5, seed=0)
    vocab = Vocabulary.of(ttt)
    with pytest.raises(ValueError, match="tokens must be"):
        vocab.decode([vocab.start_id, 0, 1])
    with pytest.raises(ValueError, match="transcript must hold"):
        vocab.encode(Transcript((0, 9), 1))


def test_match_result_score_and_its_standard_error():
    r = MatchResult(wins=3, draws=2, losses=5)
    assert r.n == 10 and r.score == pytest.approx(0.4)
    values = torch.tensor([1.0] * 3 + [0.5] * 2 + [0.0] * 5)
    assert r.score_se == pytest.approx(float(values.std(unbiased=False)) / 10**0.5)


def test_optimal_move_fraction_of_the_solver_is_one_and_of_a_bad_choice_is_lower(ttt, solver):
    states = [replay(ttt, g.actions[:j]) for g in generate_games(ttt, ("random", "random"), 20, seed=1)
              for j in range(len(g.actions))]
    assert optimal_move_fraction(lambda s: solver.optimal_actions(s)[0], solver, states) == 1.0
    assert optimal_move_fraction(lambda s: s.legal_actions()[-1], solver, states) < 1.0


def test_board_states_agree_with_the_boards_pyspiel_prints(ttt, c4):
    for game, name in ((ttt, "tic_tac_toe"), (c4, "connect_four")):
        for t in generate_games(game, ("random", "random"), 5, seed=2):
            boards = board_states(game, name, t)
            assert boards.shape[0] == len(t.actions) + 1
            assert (boards[0] == EMPTY).all()
            for j in range(len(t.actions) + 1):
                state = replay(game, t.actions[:j])
                rows = [r for r in str(state).splitlines() if r]
                if name == "connect_four":
                    rows = rows[::-1]  # the observation's row 0 is the bottom row
                cells = "".join(rows)
                mover = "xo"[j % 2]
                expected = [EMPTY if c == "." else MINE if c == mover else THEIRS for c in cells]
                assert boards[j].tolist() == expected
            absolute = board_states(game, name, t, relative=False)
            assert torch.equal(absolute[0::2], boards[0::2])  # x to move: x's pieces are "mine"
            assert torch.equal(absolute[1::2], (3 - boards[1::2]) % 3)  # o to move: MINE and THEIRS swap


def test_move_counts_read_a_tic_tac_toe_board_exactly(ttt):
    # in tic-tac-toe an action is a square: "mine" is "played by the player to move"
    t = generate_games(ttt, ("random", "random"), 1, seed=0)[0]
    features, boards = move_count_features(t, 9), board_states(ttt, "tic_tac_toe", t)
    assert torch.equal((features[:, :9] > 0), boards == MINE)
    assert torch.equal((features[:, 9:] > 0), boards == THEIRS)


def test_residual_states_end_where_hidden_states_begin_the_final_norm(c4):
    vocab = Vocabulary.of(c4)
    model = tiny_gpt(vocab)
    tokens = vocab.batch(generate_games(c4, ("random", "random"), 3, seed=0))
    states = residual_states(model, tokens)
    assert states.shape == (3, 3, vocab.context_length, 16)
    torch.testing.assert_close(model.final_norm(states[-1]), model.hidden_states(tokens))
    torch.testing.assert_close(next_token_logits(model, vocab, generate_games(c4, ("random", "random"), 3, seed=0)),
                               model(tokens))


def test_board_probe_agrees_with_one_logistic_regression_per_square():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    y = torch.stack([(x[:, 0] > 0).long() + (x[:, 1] > 0.5).long(), (x[:, 2] + x[:, 3] > 0).long() * 2,
                     torch.zeros(300, dtype=torch.long)], 1)  # the third square is always empty
    joint = board_probe(x[:200], y[:200], x[200:], y[200:], max_iter=200)
    separate = [probe_accuracy(x[:200], y[:200, s], x[200:], y[200:, s], 3) for s in range(3)]
    assert joint.tolist() == pytest.approx(separate, abs=0.021)  # at most two test examples in 100 differ
    assert joint[1] > 0.95 and joint[2] == 1.0
    with pytest.raises(ValueError, match="test_x must be"):
        board_probe(x[:200], y[:200], x[200:, :4], y[200:])


def test_function_bot_plays_its_function_through_evaluate_bots(ttt):
    first_legal = FunctionBot(lambda state: state.legal_actions()[0])
    returns = pyspiel.evaluate_bots(ttt.new_initial_state(), [first_legal, first_legal], 0)
    # squares in order: x takes 0, 2, 4, 6 and wins on the diagonal 2-4-6
    assert list(returns) == [1.0, -1.0]


def test_winning_and_safe_moves_of_a_connect_four_position(c4):
    state = replay(c4, [3, 3, 4, 4, 5])  # x holds columns 3, 4, 5 of the bottom row; o to move
    assert winning_moves(state) == []
    assert safe_moves(state) == []  # x wins at 2 or at 6 and o can stop only one
    state.apply_action(0)
    assert winning_moves(state) == [2, 6] and safe_moves(state) == list(range(7))
    with pytest.raises(ValueError, match="finished game"):
        winning_moves(replay(c4, [3, 3, 4, 4, 5, 0, 2]))


def test_tactics_agree_with_the_solver(ttt, solver):
    games = generate_games(ttt, ("random", "random"), 200, seed=2)
    found = tactics(ttt, games)
    assert {t.kind for t in found} == {"win", "block"}
    for t in found:
        values = solver.action_values(t.state)
        assert t.played in t.state.legal_actions() and 0 < t.chance <= 1
        if t.kind == "win":  # a move that wins at once has the best value there is
            assert all(values[a] == 1 for a in t.good)
            assert all(t.state.child(a).is_terminal() for a in t.good)
        else:  # every move but the good ones loses at once
            assert all(values[a] == -1 for a in t.state.legal_actions() if a not in t.good)
            assert t.chance < 1
    assert good_move_fraction(lambda s: (winning_moves(s) or safe_moves(s))[0], found) == 1.0
    assert good_move_fraction(lambda s: s.legal_actions()[0], found) < 1.0
    with pytest.raises(ValueError, match="positions must hold"):
        good_move_fraction(lambda s: 0, [])


def test_moves_only_loss_renormalises_over_the_actions(c4):
    vocab = Vocabulary.of(c4)
    games = generate_games(c4, ("random", "random"), 3, seed=0)
    logits = torch.randn(len(games), vocab.context_length, vocab.vocab_size)
    actions_only = logits.clone()
    actions_only[..., vocab.n_actions:] = float("-inf")  # no probability left on the special tokens
    expected = move_losses(actions_only, vocab, games)
    assert torch.allclose(move_losses(logits, vocab, games, moves_only=True), expected)
    assert (move_losses(logits, vocab, games) > expected).all()


@pytest.mark.parametrize("name", ["tic_tac_toe", "connect_four"])
def test_mirrored_games_replay_to_their_result_on_the_reflected_board(name):
    game = load_game(name)
    games = generate_games(game, ("random", "random"), 20, seed=3)
    width = game.observation_tensor_shape()[-1]
    for original, mirror in zip(games, mirrored(name, games), strict=True):
        assert result_of(replay(game, mirror.actions).returns()) == mirror.result == original.result
        boards = board_states(game, name, original).view(len(original.actions) + 1, -1, width)
        assert torch.equal(board_states(game, name, mirror).view_as(boards), boards.flip(-1))
    assert mirrored(name, mirrored(name, games)) == games
    with pytest.raises(ValueError, match="name must be one of"):
        mirrored("chess", games)


def test_training_on_random_games_learns_the_rules_and_records_the_learning_curve(ttt):
    vocab = Vocabulary.of(ttt)
    train, test = split_by_game(generate_games(ttt, ("random", "random"), 2000, seed=4), 0.1, seed=0)
    config = dataclasses.replace(gpt2_config(2, 32, 2, vocab_size=vocab.vocab_size,
                                             context_length=vocab.context_length, dropout=0.0), tie_embeddings=False)
    model, history = train_on_games(config, train, vocab, 32, TrainerConfig(
        max_steps=600, lr=3e-3, warmup_steps=20, eval_every=200, device="cpu", seed=0), test_games=test)
    curve = history.eval["test_move_loss"]
    assert history.eval_step == [200, 400, 600] and len(curve) == 3
    assert curve[-1] == pytest.approx(move_losses(next_token_logits(model, vocab, test), vocab, test,
                                                  moves_only=True).mean().item())
    legal = legal_masks(ttt, vocab, test)
    uniform_legal = legal.sum(-1)[legal.sum(-1) > 0].float().log().mean().item()  # the best any model can do
    assert curve[-1] < curve[0] and uniform_legal < curve[-1] < uniform_legal + 0.25 < torch.tensor(9.0).log()
    with pytest.raises(ValueError, match="eval_every"):
        train_on_games(config, train, vocab, 32, TrainerConfig(max_steps=1, warmup_steps=0), test_games=test)


def test_probe_data_lines_up_hidden_states_boards_and_counts(c4):
    vocab = Vocabulary.of(c4)
    games = generate_games(c4, ("random", "random"), 3, seed=5)
    model = tiny_gpt(vocab)
    x, boards, counts = probe_data(c4, "connect_four", vocab, model, games)
    n_positions = sum(len(g.actions) + 1 for g in games)
    assert x.shape == (model.config.n_layers + 1, n_positions, model.config.d_model)
    assert boards.shape == (n_positions, 42) and counts.shape == (n_positions, 14)
    start = len(games[0].actions) + 1  # the second game's positions follow the first's
    second = residual_states(model, vocab.batch(games[1:2]))[:, 0, :len(games[1].actions) + 1]
    assert torch.allclose(x[:, start:start + second.shape[1]], second, atol=1e-5)
    assert torch.equal(boards[start:start + second.shape[1]], board_states(c4, "connect_four", games[1]))
    assert (boards[start] == EMPTY).all()  # read at <start>: the empty board
    with pytest.raises(ValueError, match="at least one game"):
        probe_data(c4, "connect_four", vocab, model, [])
