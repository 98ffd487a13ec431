import {
  BadRequestException,
  Body,
  ConflictException,
  Controller,
  Delete,
  Get,
  HttpCode,
  NotFoundException,
  Param,
  ParseIntPipe,
  Post,
  Query,
  RequestTimeoutException,
} from '@nestjs/common';
import {
  InputMismatchError,
  InvalidPayloadError,
  InvalidRunIdError,
  InvalidRunSpecError,
  PayloadTooLargeError,
  ReservedHeaderError,
  RunNotFoundError,
  type RunOutcome,
  type RunStatus,
  type SubmitOutcome,
  WaitTimeoutError,
  WorkflowService,
} from 'nestjs-durable-workflow';
import type { ApprovalDecision, ResearchInput } from './research-agent.runner.js';

interface SubmitRunBody {
  topic?: string;
  /** Read these in parallel (one child run each) before the draft. */
  sources?: unknown;
  /** Wait for `POST /runs/:id/approve` after the draft. */
  approval?: boolean;
  /** Lets a client retry a POST safely: the same id and topic never start a second run. */
  runId?: string;
}

@Controller('runs')
export class RunsController {
  constructor(private readonly workflows: WorkflowService) {}

  @Post()
  async submit(@Body() body: SubmitRunBody = {}): Promise<SubmitOutcome> {
    // Empty topics are accepted on purpose: the runner fails them, which shows how a
    // run ends `failed` with a reason. A real API would validate here too.
    const input: ResearchInput = {
      topic: typeof body.topic === 'string' ? body.topic : '',
      ...(body.sources !== undefined ? { sources: sourcesOf(body.sources) } : {}),
      ...(body.approval === true ? { approval: true } : {}),
    };
    try {
      return await this.workflows.submit('research-agent', { runId: body.runId, input });
    } catch (err) {
      throw toHttpError(err);
    }
  }

  /** A person's decision on the draft: the `approval` signal the waiting run takes. */
  @Post(':id/approve')
  @HttpCode(200)
  async approve(
    @Param('id') id: string,
    @Body() body: { approved?: boolean; note?: string } = {},
  ): Promise<{ sent: true }> {
    const decision: ApprovalDecision = {
      approved: body.approved !== false,
      ...(body.note ? { note: String(body.note) } : {}),
    };
    const sent = await this.workflows.signal(id, 'approval', decision).catch((err) => Promise.reject(toHttpError(err)));
    if (!sent) throw new NotFoundException(`no running run ${id}`);
    return { sent: true };
  }

  @Get(':id')
  async status(@Param('id') id: string): Promise<RunStatus> {
    const status = await this.workflows.status(id).catch((err) => Promise.reject(toHttpError(err)));
    if (!status) throw new NotFoundException(`no run ${id}`);
    return status;
  }

  @Get(':id/outcome')
  async outcome(
    @Param('id') id: string,
    @Query('timeoutMs', new ParseIntPipe({ optional: true })) timeoutMs = 30_000,
  ): Promise<RunOutcome> {
    try {
      // Capped so a client cannot park a request (and a poll loop) here forever.
      return await this.workflows.waitForOutcome(id, { timeoutMs: Math.min(Math.max(timeoutMs, 0), 60_000) });
    } catch (err) {
      throw toHttpError(err);
    }
  }

  @Delete(':id')
  @HttpCode(200)
  async cancel(@Param('id') id: string): Promise<{ cancelled: true }> {
    if (await this.workflows.cancel(id).catch((err) => Promise.reject(toHttpError(err)))) return { cancelled: true };
    // cancel() is false both for unknown and for finished runs; tell the client which.
    const status = await this.workflows.status(id);
    if (!status) throw new NotFoundException(`no run ${id}`);
    throw new ConflictException(`run ${id} is already ${status.state}`);
  }
}

/** Up to 10 source names; a spawn of too many children would fail the run instead of the request. */
function sourcesOf(value: unknown): string[] {
  const ok = (s: unknown): s is string => typeof s === 'string' && s.trim().length > 0 && s.length <= 200;
  if (!Array.isArray(value) || value.length === 0 || value.length > 10 || !value.every(ok)) {
    throw new BadRequestException('sources must be a list of 1 to 10 non-empty names (at most 200 characters each)');
  }
  return value.map((s: string) => s.trim());
}

/** The module's errors are plain Errors; map the ones a client can cause to 4xx. */
function toHttpError(err: unknown): unknown {
  if (
    err instanceof InvalidRunIdError ||
    err instanceof InvalidRunSpecError ||
    err instanceof InvalidPayloadError ||
    err instanceof PayloadTooLargeError ||
    err instanceof ReservedHeaderError
  ) {
    return new BadRequestException(err.message);
  }
  if (err instanceof InputMismatchError) return new ConflictException(err.message);
  if (err instanceof RunNotFoundError) return new NotFoundException(err.message);
  // The run goes on; the client may ask again.
  if (err instanceof WaitTimeoutError) return new RequestTimeoutException(err.message);
  return err;
}
