"""One rank of a two-process gloo job on the CPU with cen_lab.observe in its loop (run by test_observer)."""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F


def main(rank: int, world: int, init_file: str, out_dir: str, report: str) -> None:
    import cen_lab
    from cen_lab.zoo import ReferenceStyleCEN

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    obs = cen_lab.observe(model, out_dir, layers="*.bn2", penalised="alternate-halves")
    gen = torch.Generator().manual_seed(rank)
    with obs:
        for step in range(3):
            xs = [torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)]
            y = torch.randint(0, 4, (2, 16, 16), generator=gen)
            opt.zero_grad()
            with obs.grads(step):
                outputs, _ = model(xs)
                sum(F.cross_entropy(o, y) for o in outputs).backward()
            obs.log(step, metrics={"loss/total": 1.0})
            opt.step()
    with open(report, "w") as f:
        json.dump({"rank": rank, "observer": type(obs).__name__, "writing": obs.writing}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
