import { resolve } from 'node:path';
import ts from 'typescript';

/**
 * Type-level contract of the public API. Runs the TypeScript compiler with the
 * project's own options on files under test/types, so a regression in what users can
 * write (e.g. `implements StepRunner`) fails `npm test`, not only an editor.
 */
function diagnosticsOf(file: string): string[] {
  const configPath = resolve('tsconfig.json');
  const read = ts.readConfigFile(configPath, ts.sys.readFile);
  if (read.error) throw new Error(ts.flattenDiagnosticMessageText(read.error.messageText, '\n'));
  const parsed = ts.parseJsonConfigFileContent(read.config, ts.sys, resolve('.'), { noEmit: true }, configPath);
  const program = ts.createProgram({ rootNames: [resolve(file)], options: parsed.options });
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
    if (!d.file || d.start === undefined) return `TS${d.code}: ${text}`;
    const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
    return `${d.file.fileName}:${line + 1}:${character + 1} TS${d.code}: ${text}`;
  });
}

describe('public types', () => {
  it('a class can `implements StepRunner` (plain and with generics) under the @StepRunner decorator', () => {
    expect(diagnosticsOf('test/types/implements.ts')).toEqual([]);
  }, 60_000);
});
