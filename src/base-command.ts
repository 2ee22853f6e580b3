import { Command } from '@oclif/core';
import { stallTimeoutMs } from './util/stall.ts';

type OclifError = Error & { oclif?: { exit?: number }; code?: unknown; skipOclifErrorHandling?: boolean };

/**
 * Every command's base: errors are printed as ONE line on stderr (oclif would wrap them at the
 * terminal width), so operators can grep logs and scripts can parse them; the exit code is kept.
 */
export abstract class AirgapCommand extends Command {
  protected override async catch(err: OclifError): Promise<unknown> {
    // this.exit() throws oclif's ExitError (name 'Error', code 'EEXIT'): the command has said what it had to.
    if (err.oclif?.exit !== 0 && err.code !== 'EEXIT') {
      const line = err.message.replace(/\s*\n\s*/g, ' ').trim();
      process.stderr.write(`Error: ${line}\n`);
      err.skipOclifErrorHandling = true;
    }
    throw err;
  }

  /** CARTESIA_AIRGAP_STALL_TIMEOUT, or the default; a malformed value is bad usage (exit 2). */
  protected stallTimeoutMs(): number {
    try {
      return stallTimeoutMs();
    } catch (err) {
      this.error((err as Error).message, { exit: 2 });
    }
  }
}
