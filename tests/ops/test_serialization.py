import pytest
import torch

from unipre3d_hf.ops.serialization import MAX_DEPTH, hilbert_encode, serialize, z_order_encode


def full_cube(k: int) -> torch.Tensor:
    r = torch.arange(2**k)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


def test_z_order_interleaves_bits_x_most_significant():
    grid = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 5, 6], [7, 7, 7]])
    # [3, 5, 6]: bit0 (x,y,z) = 1,1,0 -> 6; bit1 = 1,0,1 -> 5; bit2 = 0,1,1 -> 3  =>  3 * 64 + 5 * 8 + 6
    assert z_order_encode(grid, depth=3).tolist() == [4, 2, 1, 238, 511]


def test_z_order_is_a_bijection_on_the_cube():
    codes = z_order_encode(full_cube(3), depth=3)
    assert torch.equal(codes.sort().values, torch.arange(512))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("depth_extra", [0, 5])
def test_hilbert_consecutive_codes_are_face_neighbours(k, depth_extra):
    grid = full_cube(k)
    codes = hilbert_encode(grid, depth=k + depth_extra)
    ordered = grid[codes.argsort()]
    steps = (ordered[1:] - ordered[:-1]).abs().sum(dim=1)
    assert steps.eq(1).all()  # each step moves to a face-adjacent cell
    if depth_extra == 0:
        assert torch.equal(codes.sort().values, torch.arange(8**k))  # a bijection onto [0, 8^k)


def test_serialize_puts_batch_in_high_bits_and_trans_swaps_xy():
    grid = torch.tensor([[5, 1, 2], [0, 0, 0], [5, 1, 2]])
    batch = torch.tensor([0, 1, 1])
    codes = serialize(grid, batch, "z")
    assert codes[2] - codes[0] == 1 << (3 * MAX_DEPTH)
    assert codes[1] > codes[0]  # scene 1 after every voxel of scene 0
    assert torch.equal(serialize(grid, batch, "z-trans"), serialize(grid[:, [1, 0, 2]], batch, "z"))
    assert torch.equal(serialize(grid, batch, "hilbert-trans"), serialize(grid[:, [1, 0, 2]], batch, "hilbert"))


def test_serialize_order_of_a_scene_does_not_depend_on_its_batch():
    g = torch.Generator().manual_seed(0)
    small = torch.unique(torch.randint(0, 20, (300, 3), generator=g), dim=0)  # distinct cells: no ties
    large = torch.randint(0, 3000, (300, 3), generator=g)
    n = small.shape[0]
    alone = serialize(small, torch.zeros(n, dtype=torch.long), "hilbert").argsort()
    both = serialize(torch.cat([small, large]), torch.cat([torch.zeros(n), torch.ones(300)]).long(), "hilbert")
    assert torch.equal(both.argsort()[:n], alone)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="order"):
        serialize(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), "peano")
    with pytest.raises(ValueError, match="grid_coords"):
        z_order_encode(torch.tensor([[-1, 0, 0]]), depth=4)
    with pytest.raises(ValueError, match="grid_coords"):
        hilbert_encode(torch.zeros(2, 3), depth=4)
    with pytest.raises(ValueError, match="batch_index"):
        serialize(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
